"""The API protocols the relay serves, and which one a request belongs to.

A protocol is a folder here implementing `relay_core.protocols.base.ApiProtocol`; `register` makes it
known (Anthropic's and Gemini's are registered below). Nothing else changes to add one: the addons reach a request's
protocol through `FlowState.protocol`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.base import ApiProtocol
from relay_core.protocols.base import RequestRoute
from relay_core.protocols.gemini.protocol import GeminiProtocol
from relay_core.routes import Route
from relay_core.routes import is_ambiguous_path
from relay_core.routes import own_route

# The first one also shapes the relay's answers to requests no protocol owns (unknown paths, mitmproxy's
# own error pages): Anthropic's, as Claude Code was the relay's first client.
_protocols: list[ApiProtocol] = [AnthropicProtocol(), GeminiProtocol()]


class Classified(NamedTuple):
    protocol: ApiProtocol
    route: RequestRoute


def register(protocol: ApiProtocol) -> None:
    """Serve one more protocol; its routes must not overlap the ones already served."""
    if any(known.name == protocol.name for known in _protocols):
        raise ValueError(f"protocol {protocol.name!r} is already registered")
    _protocols.append(protocol)
    _classify_path.cache_clear()


def default_protocol() -> ApiProtocol:
    return _protocols[0]


def classify(method: str, path: str) -> Classified:
    """The protocol and route of a request line; the query string is ignored (Claude Code sends `?beta=true`)."""
    return _classify_path(method, path.split("?", 1)[0])


@functools.lru_cache(maxsize=1024)  # asked once per request; a client's few paths recur (never a query: a key)
def _classify_path(method: str, path: str) -> Classified:
    if is_ambiguous_path(path):
        return Classified(_protocols[0], Route.BAD_PATH)
    path = path.rstrip("/") or "/"
    own = own_route(method, path)  # the relay's own endpoints first: no protocol can shadow /health
    if own is Route.UNKNOWN:
        for protocol in _protocols:
            route = protocol.classify(method, path)
            if route is not None:
                return Classified(protocol, route)
    return Classified(_protocols[0], own)
