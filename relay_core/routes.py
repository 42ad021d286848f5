"""Which requests the relay serves, and how. Anything not listed here never goes upstream."""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"
    PROBE = "probe"
    HEALTH = "health"
    TELEMETRY = "telemetry"
    SELF_SERVICE = "self_service"  # a key's own limits and usage
    UNKNOWN = "unknown"

    @property
    def is_relayed(self) -> bool:
        return self in (Route.MESSAGES, Route.COUNT_TOKENS, Route.MODELS)

    @property
    def is_metered(self) -> bool:
        return self is Route.MESSAGES


def classify(method: str, path: str) -> Route:
    """Route of a request line; the query string is ignored (Claude Code sends `?beta=true`)."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    match method, path:
        case "POST", "/v1/messages":
            return Route.MESSAGES
        case "POST", "/v1/messages/count_tokens":
            return Route.COUNT_TOKENS
        case "GET", "/v1/models":
            return Route.MODELS
        case "GET", _ if path.startswith("/v1/models/") and path.count("/") == 3:
            return Route.MODELS
        case (("HEAD" | "GET"), "/"):
            return Route.PROBE
        case (("GET" | "HEAD"), "/health"):
            return Route.HEALTH
        case "POST", "/api/event_logging/batch":
            return Route.TELEMETRY
        case "GET", "/relay/usage":
            return Route.SELF_SERVICE
    return Route.UNKNOWN
