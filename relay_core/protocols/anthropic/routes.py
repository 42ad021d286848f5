"""The Messages API requests the relay serves; anything no protocol lists never goes upstream."""

from __future__ import annotations

from enum import StrEnum


class AnthropicRoute(StrEnum):
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"
    TELEMETRY = "telemetry"  # Claude Code's event logging: answered by the relay, never sent upstream

    @property
    def is_relayed(self) -> bool:
        return self in (AnthropicRoute.MESSAGES, AnthropicRoute.COUNT_TOKENS, AnthropicRoute.MODELS)

    @property
    def is_metered(self) -> bool:
        return self is AnthropicRoute.MESSAGES

    @property
    def reads_body(self) -> bool:
        return self in (AnthropicRoute.MESSAGES, AnthropicRoute.COUNT_TOKENS)


def classify(method: str, path: str) -> AnthropicRoute | None:
    """Route of a request line (`path` as `ApiProtocol.classify` gets it)."""
    match method, path:
        case "POST", "/v1/messages":
            return AnthropicRoute.MESSAGES
        case "POST", "/v1/messages/count_tokens":
            return AnthropicRoute.COUNT_TOKENS
        case "GET", "/v1/models":
            return AnthropicRoute.MODELS
        case "GET", _ if path.startswith("/v1/models/") and path.count("/") == 3:
            return AnthropicRoute.MODELS
        case "POST", "/api/event_logging/batch" | "/api/event_logging/v2/batch":  # v2: to api.anthropic.com itself
            return AnthropicRoute.TELEMETRY
    return None
