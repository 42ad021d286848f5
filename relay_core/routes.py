"""The relay's own endpoints, and the paths it refuses before any protocol sees them.

A protocol's routes live in its folder (relay_core/protocols); relay_core.protocols.classify asks them first.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import unquote

MAX_DECODINGS = 3  # layers of percent-encoding looked through (a chain of proxies may each decode once)


class Route(StrEnum):
    PROBE = "probe"
    HEALTH = "health"
    SELF_SERVICE = "self_service"  # a key's own limits and usage
    PAGE = "page"  # the web page under /relay/ (relay_core/web): sign-in, a key's view, the team dashboard
    BAD_PATH = "bad_path"  # refused with 400 before anything else: see `is_ambiguous_path`
    UNKNOWN = "unknown"

    @property
    def is_relayed(self) -> bool:
        return False

    @property
    def is_metered(self) -> bool:
        return False

    @property
    def reads_body(self) -> bool:
        return False


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


def own_route(method: str, path: str) -> Route:
    """Which of the relay's own endpoints a request line is (`path` as `ApiProtocol.classify` gets it)."""
    match method, path:
        case (("HEAD" | "GET"), "/"):
            return Route.PROBE
        case (("GET" | "HEAD"), "/health"):
            return Route.HEALTH
        case "GET", "/relay/usage":
            return Route.SELF_SERVICE
        case (("GET" | "POST"), _) if (path == "/relay" or path.startswith("/relay/")) and path != "/relay/usage":
            return Route.PAGE  # /relay/usage is JSON for scripts, whatever the method
    return Route.UNKNOWN
