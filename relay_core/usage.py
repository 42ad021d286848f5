"""Token usage of one response, in the relay's own counters (each protocol fills them from its usage objects)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields
from operator import attrgetter
from typing import Any


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    thinking_tokens: int = 0  # the part of output_tokens that was thinking, where the API says (Gemini)

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

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
        return dict(zip(COUNTER_NAMES, _counter_values(self), strict=True))

    def is_empty(self) -> bool:
        return not any(_counter_values(self))


# Read on every request (dataclasses.fields() walks the class each time it is asked).
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TokenUsage))
_counter_values = attrgetter(*COUNTER_NAMES)
