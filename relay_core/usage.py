"""Token usage of one response, merged the way the Messages API reports it.

`message_start` carries the input and cache counts; `message_delta` repeats them cumulatively (in
newer streams) and carries the final output count. Values are never summed across events: a later
non-zero value replaces an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields
from typing import Any


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    def merge(self, usage: Any) -> None:
        """Fold one API `usage` object into this one (later non-zero values win)."""
        if not isinstance(usage, dict):
            return
        updates = {
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens"),
        }
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            updates["cache_write_5m_tokens"] = creation.get("ephemeral_5m_input_tokens")
            updates["cache_write_1h_tokens"] = creation.get("ephemeral_1h_input_tokens")
        else:
            # Only the total (older responses, and message_delta): keep the known 5m/1h split when it
            # adds up; otherwise the unexplained part was written with the default 5m TTL.
            total = _count(usage.get("cache_creation_input_tokens"))
            if total and total != self.cache_creation_input_tokens:
                keep_1h = self.cache_write_1h_tokens if self.cache_write_1h_tokens <= total else 0
                self.cache_write_1h_tokens = keep_1h
                self.cache_write_5m_tokens = total - keep_1h
        server_tools = usage.get("server_tool_use")
        if isinstance(server_tools, dict):
            updates["web_search_requests"] = server_tools.get("web_search_requests")
        for name, value in updates.items():
            count = _count(value)
            if count:
                setattr(self, name, count)

    def as_api_usage(self) -> dict[str, Any]:
        """The Anthropic-shaped usage object (what genai-prices' extraction expects)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            },
            "server_tool_use": {"web_search_requests": self.web_search_requests},
        }

    def counters(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def is_empty(self) -> bool:
        return not any(self.counters().values())


def _count(value: Any) -> int:
    """A token count from untrusted JSON: non-negative ints only, anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value
