"""Which requests the relay serves, and how. Anything not listed here never goes upstream."""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import unquote

MAX_DECODINGS = 3  # layers of percent-encoding looked through (a chain of proxies may each decode once)


class Route(StrEnum):
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"
    PROBE = "probe"
    HEALTH = "health"
    TELEMETRY = "telemetry"
    SELF_SERVICE = "self_service"  # a key's own limits and usage
    BAD_PATH = "bad_path"  # refused with 400 before anything else: see `is_ambiguous_path`
    UNKNOWN = "unknown"

    @property
    def is_relayed(self) -> bool:
        return self in (Route.MESSAGES, Route.COUNT_TOKENS, Route.MODELS)

    @property
    def is_metered(self) -> bool:
        return self is Route.MESSAGES


def is_ambiguous_path(path: str) -> bool:
    """A `.` or `..` segment, or a `/` or `\\` that is encoded (or a raw `\\`), at any of a few layers of
    percent-encoding: a server or proxy that normalises the path would serve another resource than the one
    the relay classified (`/v1/models/..%2f..%2fx`). `path` has no query."""
    if "%" not in path and "." not in path and "\\" not in path:  # every request Claude Code sends
        return False
    for _ in range(MAX_DECODINGS + 1):
        lowered = path.lower()
        if "%2f" in lowered or "%5c" in lowered or "\\" in path or any(s in (".", "..") for s in path.split("/")):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True  # still encoded after MAX_DECODINGS layers: nobody sends that in good faith


def classify(method: str, path: str) -> Route:
    """Route of a request line; the query string is ignored (Claude Code sends `?beta=true`)."""
    path = path.split("?", 1)[0]
    if is_ambiguous_path(path):
        return Route.BAD_PATH
    path = path.rstrip("/") or "/"
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
