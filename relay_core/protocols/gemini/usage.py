"""Token usage as Gemini reports it (`usageMetadata`), in the relay's counters.

Usage is cumulative: every chunk of a stream may carry it and only the last one counts, so a later
reading replaces an earlier one and chunks are never added up. `promptTokenCount` includes the cached
tokens (priced at the cache rate, so taken out of the input count); thoughts are output.
"""

from __future__ import annotations

import json
from typing import Any

from relay_core.usage import TokenUsage


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_metadata(metadata: Any) -> TokenUsage | None:
    """The relay's counters for one `usageMetadata` object (None when it is not one)."""
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata.get("promptTokenCount")) + _count(metadata.get("toolUsePromptTokenCount"))
    cached = min(_count(metadata.get("cachedContentTokenCount")), prompt)
    thoughts = _count(metadata.get("thoughtsTokenCount"))
    return TokenUsage(
        input_tokens=prompt - cached,
        cache_read_input_tokens=cached,
        output_tokens=_count(metadata.get("candidatesTokenCount")) + thoughts,
        thinking_tokens=thoughts,
    )


def unwrapped(payload: Any) -> dict[str, Any] | None:
    """A GenerateContentResponse: Code Assist wraps it in `response`, the Gemini API does not."""
    if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
        response: dict[str, Any] = payload["response"]
        return response
    return payload if isinstance(payload, dict) else None


def answer_usage(body: bytes | None) -> tuple[TokenUsage, str | None]:
    """Usage and model of a buffered answer (empty usage and None for anything else)."""
    try:
        response = unwrapped(json.loads(body or b""))
    except (ValueError, UnicodeDecodeError):
        return TokenUsage(), None
    if response is None:
        return TokenUsage(), None
    usage = usage_from_metadata(response.get("usageMetadata")) or TokenUsage()
    model = response.get("modelVersion")
    return usage, model if isinstance(model, str) else None
