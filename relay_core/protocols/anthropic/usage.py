"""Token usage as the Messages API reports it.

`message_start` carries the input and cache counts; `message_delta` repeats them cumulatively (in
newer streams) and carries the final output count. Values are never summed across events: a later
non-zero value replaces an earlier one.
"""

from __future__ import annotations

import json
from typing import Any

from relay_core.usage import TokenUsage


def merge_usage(tokens: TokenUsage, usage: Any) -> None:
    """Fold one API `usage` object into `tokens` (later non-zero values win)."""
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
        if total and total != tokens.cache_creation_input_tokens:
            keep_1h = tokens.cache_write_1h_tokens if tokens.cache_write_1h_tokens <= total else 0
            tokens.cache_write_1h_tokens = keep_1h
            tokens.cache_write_5m_tokens = total - keep_1h
    server_tools = usage.get("server_tool_use")
    if isinstance(server_tools, dict):
        updates["web_search_requests"] = server_tools.get("web_search_requests")
    for name, value in updates.items():
        count = _count(value)
        if count:
            setattr(tokens, name, count)


def _count(value: Any) -> int:
    """A token count from untrusted JSON: non-negative ints only, anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def answer_usage(body: bytes | None) -> tuple[TokenUsage, str | None]:
    """The usage and model of a JSON answer (empty usage and None for anything else)."""
    usage = TokenUsage()
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return usage, None
    if not isinstance(payload, dict):
        return usage, None
    merge_usage(usage, payload.get("usage"))
    model = payload.get("model")
    return usage, model if isinstance(model, str) else None
