"""Helpers every relay addon shares: the per-flow state and fail-closed refusals."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import Optional
from typing import cast

from mitmproxy import http

from relay_core.errors import RelayError
from relay_core.errors import internal_error
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.protocols import default_protocol

# mitmproxy options take typing forms (`Optional[str]`: a text option that may be unset); its stubs say `type`.
OPTIONAL_TEXT = cast(type, Optional[str])  # noqa: UP045

logger = logging.getLogger(__name__)


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(METADATA_KEY)


def pending_state(flow: http.HTTPFlow) -> FlowState | None:
    """The flow's state while its request still waits for the relay (not answered, not failed, live)."""
    if flow.response or flow.error or not flow.live:
        return None
    return state_of(flow)


def header_map(headers: http.Headers) -> dict[str, str]:
    """The headers as a dict with lowercase names, each value what `headers[name]` gives (repeats joined with
    ", "): for rules that read many of them, as each read of mitmproxy's `Headers` walks every field."""
    found: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def set_headers(headers: http.Headers, values: dict[str, str]) -> None:
    """`headers.update(values)` in one pass: each set on mitmproxy's `Headers` walks and rebuilds every field.
    The fields set come last, each once, whatever case or repeats the names had before."""
    replaced = {name.lower() for name in values}
    kept = [field for field in headers.fields if field[0].decode("latin-1").lower() not in replaced]
    added = [(name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in values.items()]
    headers.fields = (*kept, *added)


def refuse(flow: http.HTTPFlow, error: RelayError) -> None:
    """Answer the flow locally with an error in its protocol's shape; nothing goes upstream."""
    state = state_of(flow)
    request_id = state.request_id if state else "req_relay_unknown"
    protocol = state.protocol if state else default_protocol()
    flow.response = http.Response.make(error.status, protocol.error_body(error, request_id), error.headers(request_id))
    if state is not None:
        state.refused = True


def fail_closed(
    hook: Callable[[Any, http.HTTPFlow], Awaitable[None]],
) -> Callable[[Any, http.HTTPFlow], Awaitable[None]]:
    """mitmproxy lets a flow go on when a hook raises; these hooks answer an error instead."""

    @functools.wraps(hook)
    async def guarded(self: Any, flow: http.HTTPFlow) -> None:
        try:
            await hook(self, flow)
        except RelayError as exc:
            refuse(flow, exc)
        except Exception:
            logger.exception("%s.%s failed; refusing the request", type(self).__name__, hook.__name__)
            refuse(flow, internal_error())

    return guarded
