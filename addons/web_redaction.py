"""What mitmweb may keep of relay traffic: redacted copies of the flows, never the live ones, and only so many.

mitmweb's `view` addon stores the *live* flow object in its `requestheaders` hook and serves it on
demand (GET /flows, the content and dump endpoints) and pushes it over the /updates websocket each
time it changes. For the relay that would expose the client's team key from `requestheaders` on, and
the account's token the Router swaps in for as long as the request is upstream. Scrubbing the live
flow cannot work: before the request went upstream it would send the scrubbed credential, after it a
websocket message or a GET may already have shown the real one.

So the view never holds a live flow. On load this addon silences the view's hooks that *add* flows
(`requestheaders`, `tcp_start`, `udp_start`, `dns_request`: an instance attribute shadows each) and
adds its own copy of each HTTP flow instead, refreshed at `requestheaders`, `responseheaders`,
`response` and `error`, with credentials masked (Authorization, x-api-key, Proxy-Authorization,
Cookie, Set-Cookie, any `sk-ant-...` or `rk-...` string anywhere) and OAuth token fields masked in
bodies and query strings. Copies get fresh ids, so the view's remaining hooks (`response`, `error`,
`update`, ...), which only update flows already in its store, never touch a live flow. The live flow
itself is never modified: what goes upstream keeps its real credential. Copies carry no
`flow.metadata` (the relay's state holds the key and accounts); the flow's comment names the request
id, key and account instead. This addon logs no header or body, so nothing secret reaches the
event log either.

Memory is bounded: a copy keeps at most `relay_web_max_body_bytes` of each body (head and tail; the
middle of a long prompt goes) and the view at most `relay_web_max_flows` flows, the oldest evicted.
Streamed (SSE) bodies are never stored by mitmproxy. Intercepting is refused (an intercepted live
flow could not be resumed from its copy) and so is replaying a copy (ReplayRefusal, ahead of the
relay's addons: it would put an account's credential into a flow the view holds).

Under mitmdump or `relay serve` there is no view and the addon does nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.addons.view import View

from addons.common import state_of
from relay_core.flow_state import METADATA_KEY

logger = logging.getLogger(__name__)

MASK = b"[redacted]"
_VIEW_ADDING_HOOKS = ("requestheaders", "tcp_start", "udp_start", "dns_request")
_SECRET_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"x-goog-api-key", b"proxy-authorization", b"cookie", b"set-cookie"}
)
# Anthropic credentials (sk-ant-api03-..., sk-ant-oat01-..., sk-ant-ort01-...), Google's (AIza... API keys,
# ya29. access tokens, 1// refresh tokens), relay team keys (rk-...) and the page's web tokens (rw-...); the
# kind prefix stays visible, which is what debugging needs.
_CREDENTIAL = re.compile(rb"(sk-ant-[a-z]+[0-9]*-|\brk-|\brw-|\bAIza|\bya29\.|(?<![\w/])1//)[A-Za-z0-9_\-.]{8,}")
_AUTH_SCHEME = re.compile(rb"\s*(?:bearer|basic|digest)\s+", re.IGNORECASE)
_TOKEN_FIELDS = (b"access_token", b"refresh_token", b"id_token", b"code_verifier", b"client_secret")
_TOKEN_ENDPOINT_FIELDS = (*_TOKEN_FIELDS, b"code")  # "code" is too common a JSON key to mask in every body
_QUERY_FIELDS = (*_TOKEN_ENDPOINT_FIELDS, b"api_key", b"key", b"token")


def _field_masks(names: tuple[bytes, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """A JSON string member and a form/query parameter with one of these names."""
    alternatives = b"|".join(names)
    json_member = re.compile(rb'("(?:%s)"\s*:\s*")(?:[^"\\]|\\.)*"' % alternatives)
    form_field = re.compile(rb"((?:^|&)(?:%s)=)[^&]*" % alternatives)
    return json_member, form_field


_BODY_MASKS = _field_masks(_TOKEN_FIELDS)
_TOKEN_ENDPOINT_MASKS = _field_masks(_TOKEN_ENDPOINT_FIELDS)
_QUERY_MASK = _field_masks(_QUERY_FIELDS)[1]


def _ignore(*_: Any) -> None:
    """Stands in for a view hook that would add a live flow."""


def mask_header(name: bytes, value: bytes) -> bytes:
    if name.lower() in _SECRET_HEADERS:
        scheme = _AUTH_SCHEME.match(value)
        start = scheme.end() if scheme else 0
        kind = _CREDENTIAL.match(value, start)
        return value[:start] + (kind.group(1) if kind else b"") + MASK
    return _CREDENTIAL.sub(rb"\1" + MASK, value)


def mask_body(body: bytes, token_endpoint: bool) -> bytes:
    json_member, form_field = _TOKEN_ENDPOINT_MASKS if token_endpoint else _BODY_MASKS
    body = _CREDENTIAL.sub(rb"\1" + MASK, body)
    body = json_member.sub(rb'\1%s"' % MASK, body)
    return form_field.sub(rb"\1" + MASK, body)


def mask_path(path: bytes) -> bytes:
    head, sep, query = path.partition(b"?")
    return _CREDENTIAL.sub(rb"\1" + MASK, head + sep + _QUERY_MASK.sub(rb"\1" + MASK, query))


def capped(body: bytes, limit: int) -> bytes:
    """At most `limit` bytes of the body, from its head and its tail (a prompt's latest turn is at the end)."""
    if len(body) <= limit:
        return body
    head = limit // 2
    note = b"\n[... relay web kept %d of %d bytes ...]\n" % (limit, len(body))
    return body[:head] + note + body[len(body) - (limit - head) :]


class WebRedaction:
    def __init__(self) -> None:
        self._view: View | None = None
        # live flow id -> (its copy in the view, whether the copy has the request as it went upstream)
        self._copies: dict[str, tuple[http.HTTPFlow, bool]] = {}
        self._max_flows = 1000
        self._max_body_bytes = 32768

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "relay_web_max_flows", int, 1000, "Most flows mitmweb keeps (redacted copies); the oldest go first."
        )
        loader.add_option(
            "relay_web_max_body_bytes",
            int,
            32768,
            "Most bytes of each request or response body a kept flow holds (its head and tail).",
        )
        view = ctx.master.addons.get("view")
        if isinstance(view, View):
            for hook in _VIEW_ADDING_HOOKS:
                setattr(view, hook, _ignore)  # instance attributes shadow the methods the addon manager calls
            self._view = view
            logger.info("mitmweb shows redacted copies of relay flows")

    def configure(self, updated: set[str]) -> None:
        if "relay_web_max_flows" in updated:
            if ctx.options.relay_web_max_flows < 1:
                raise exceptions.OptionsError("relay_web_max_flows must be at least 1")
            self._max_flows = ctx.options.relay_web_max_flows
            self._evict()
        if "relay_web_max_body_bytes" in updated:
            if ctx.options.relay_web_max_body_bytes < 0:
                raise exceptions.OptionsError("relay_web_max_body_bytes must not be negative")
            self._max_body_bytes = ctx.options.relay_web_max_body_bytes
        if "intercept" in updated and self._view is not None and ctx.options.intercept:
            raise exceptions.OptionsError("relay web cannot intercept: mitmweb holds copies, not the live flows")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._view is None:
            return
        if flow.is_replay == "request":  # refused by ReplayRefusal; its copy is already in the view
            return
        self._show(flow, request_final=False, ended=False)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self._view is None or flow.is_replay == "request":
            return
        self._show(flow, request_final=True, ended=False)  # by now the request went upstream or was answered

    def response(self, flow: http.HTTPFlow) -> None:
        if self._view is None:
            return
        self._end(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self._view is None:
            return
        self._end(flow)

    def done(self) -> None:
        self._copies.clear()

    def _end(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay == "request":  # a kept copy, refused: the relay's state (key, accounts) stays out of it
            flow.metadata.pop(METADATA_KEY, None)
            return
        self._show(flow, request_final=True, ended=True)

    def _show(self, flow: http.HTTPFlow, request_final: bool, ended: bool) -> None:
        """Add or refresh the flow's copy in the view; once the flow ended it is no longer tracked."""
        assert self._view is not None
        entry = self._copies.pop(flow.id, None)
        if entry is None:
            copy = http.HTTPFlow(flow.client_conn.copy(), flow.server_conn.copy())
            copy.timestamp_created = flow.timestamp_created
            self._fill(copy, flow, with_request=True)
            self._view.add([copy])
            self._evict()
        else:
            copy, copied_final_request = entry
            self._fill(copy, flow, with_request=not copied_final_request)
            self._view.update([copy])  # a no-op if the copy was evicted meanwhile
        if not ended:
            self._copies[flow.id] = (copy, request_final)

    def _fill(self, copy: http.HTTPFlow, flow: http.HTTPFlow, with_request: bool) -> None:
        token_endpoint = flow.request.data.path.partition(b"?")[0].rstrip(b"/").endswith(b"/token")
        if with_request:
            copy.server_conn = flow.server_conn.copy()
            copy.request = self._redacted(flow.request, token_endpoint)
            copy.request.data.path = mask_path(copy.request.data.path)
        copy.response = self._redacted(flow.response, token_endpoint) if flow.response else None
        copy.error = flow.error.copy() if flow.error else None
        if copy.error is not None:
            copy.error.msg = mask_body(copy.error.msg.encode(), token_endpoint).decode(errors="replace")
        state = state_of(flow)
        if state is not None:
            key = f"key {state.key.name}" if state.key else ""
            account = f"account {state.account.name}" if state.account else ""
            copy.comment = " · ".join(filter(None, [state.request_id, key, account]))

    def _redacted[M: (http.Request, http.Response)](self, message: M, token_endpoint: bool) -> M:
        copy = message.copy()  # shares the body bytes until they are masked or cut
        copy.headers.fields = tuple((name, mask_header(name, value)) for name, value in copy.headers.fields)
        if copy.trailers:
            copy.trailers.fields = tuple((name, mask_header(name, value)) for name, value in copy.trailers.fields)
        if copy.raw_content:
            if "content-encoding" in copy.headers:
                try:
                    copy.decode()  # mask what the UI would show decoded
                except ValueError:
                    copy.headers.pop("content-encoding")
                    copy.raw_content = b"[relay web: undecodable body not kept]"
            copy.raw_content = capped(mask_body(copy.raw_content, token_endpoint), self._max_body_bytes)
        return copy

    def _evict(self) -> None:
        view = self._view
        if view is None:
            return
        excess = view.store_count() - self._max_flows
        if excess > 0:
            for oldest in view.resolve("@all")[:excess]:  # the store keeps insertion order
                view.remove([oldest])  # one at a time: removing several logs an alert each time


addons = [WebRedaction()]  # `mitmweb -s addons/bundle.py -s addons/web_redaction.py`
