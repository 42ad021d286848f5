"""First-party mode: the forward-proxy listener's CONNECT policy and tunnels (rules: relay_core/forward.py).

mitmproxy serves the `forward_listen` port in regular (forward-proxy) mode next to the base-URL listener,
with the same addons, so keys, limits, scheduling, the rate lock, accounting and failover are shared.
This addon is what makes that port safe and useful:

- `http_connect`: a CONNECT to an intercept host goes on (mitmproxy answers 200 and ends the client's TLS
  with a certificate of the relay's CA); one to a host of `forward_allow_hosts` needs a valid team key in
  Proxy-Authorization (else 407); every other one gets 403 in Anthropic's error shape. No CONNECT needs
  credentials for an intercept host: Claude Code sends its key inside the tunnel, on each request.
- `next_layer`: inside a tunnel the relay decides the layers itself, whatever mitmproxy's defaults: an
  allowed tunnel is raw TCP (bytes untouched, never intercepted); an intercepted one is TLS then HTTP, never
  a raw pass-through to the real host. mitmproxy's NextLayer addon keeps a layer an earlier addon chose, and
  its layers change the connection as they are built, so this hook must run before it: under mitmdump
  scripts do; `relay serve` and `relay web` add NextLayer after the relay's chain.
- `requestheaders` (early in the chain): a request on this port is served only if it came through an
  intercepted tunnel (so no absolute-form `GET http://host/` is ever proxied) and is not for the relay's
  own endpoints. A team key given as Proxy-Authorization (on the request or on its tunnel's CONNECT) is put
  where Auth reads keys, replacing the request's own credential, which never goes upstream anyway.

Base-URL (reverse-mode) flows cost one type check per hook (about 0.1 µs in requestheaders).
"""

from __future__ import annotations

import logging

from mitmproxy import connection
from mitmproxy import http
from mitmproxy.proxy import layer
from mitmproxy.proxy import layers
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import RegularMode

from addons.common import refuse
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.errors import internal_error
from relay_core.errors import store_unavailable
from relay_core.forward import PROXY_REALM
from relay_core.forward import RAW_TUNNEL
from relay_core.forward import ForwardRules
from relay_core.forward import Tunnel
from relay_core.forward import connect_refused
from relay_core.forward import key_is_valid
from relay_core.forward import normal_host
from relay_core.forward import proxy_key
from relay_core.forward import tunnel_unauthorized
from relay_core.store import StoreError

logger = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16  # first byte of a TLS record carrying a ClientHello


def is_forward(client: connection.Client) -> bool:
    """A type check, not isinstance: mode specs are ABCs, whose isinstance costs a base-URL flow 0.4 µs a hook."""
    return type(client.proxy_mode) is RegularMode


class ForwardProxy:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._rules: ForwardRules | None = None
        self._tunnel_credentials: dict[str, str] = {}  # client connection id -> Proxy-Authorization of its CONNECT
        self._passed: dict[str, set[tuple[str, int]]] = {}  # client connection id -> tunnels allowed untouched

    def rules(self) -> ForwardRules:
        if self._rules is None:
            self._rules = ForwardRules.from_settings(self.shared.current().settings)
        return self._rules

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if not is_forward(flow.client_conn) or flow.response or flow.error:
            return
        try:
            await self._connect(flow)
        except RelayError as exc:
            self._refuse(flow, exc)
        except Exception:  # fail closed: no tunnel
            logger.exception("CONNECT policy failed; refusing the tunnel")
            self._refuse(flow, internal_error())

    async def _connect(self, flow: http.HTTPFlow) -> None:
        host, port = normal_host(flow.request.host), flow.request.port
        rules = self.rules()
        decision = rules.connect(host, port)
        client = flow.client_conn
        credentials = flow.request.headers.get("proxy-authorization")
        if decision is Tunnel.INTERCEPT:
            if credentials:
                self._tunnel_credentials[client.id] = credentials
            return
        if decision is Tunnel.REFUSE:
            logger.info("refused CONNECT %s:%d from %s: not an intercepted or allowed host", host, port, _peer(client))
            raise connect_refused(host, port, rules)
        key = proxy_key(credentials)
        try:
            valid = key is not None and await key_is_valid(self.shared.current(), key)
        except StoreError:
            raise store_unavailable() from None
        if not valid:
            logger.info("refused CONNECT %s:%d from %s: no valid team key", host, port, _peer(client))
            raise tunnel_unauthorized(host, port)
        self._passed.setdefault(client.id, set()).add((host, port))
        flow.metadata[RAW_TUNNEL] = True  # ClientTimeouts: no request deadlines on a raw tunnel

    @staticmethod
    def _refuse(flow: http.HTTPFlow, error: RelayError) -> None:
        refuse(flow, error)
        assert flow.response is not None
        flow.response.headers["connection"] = "close"
        if error.status == 407:
            flow.response.headers["proxy-authenticate"] = PROXY_REALM

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if not is_forward(context.client):
            return
        proxy = next((i for i, each in enumerate(context.layers) if isinstance(each, layers.HttpLayer)), None)
        if proxy is None or context.server.address is None:
            return  # the proxy's own HTTP layer: mitmproxy's choice (HTTP, or TLS to the proxy first)
        host, port = context.server.address[:2]
        if (normal_host(host), port) in self._passed.get(context.client.id, ()):
            nextlayer.layer = layers.TCPLayer(context, ignore=True)
        elif any(isinstance(each, layers.ClientTLSLayer) for each in context.layers[proxy + 1 :]):
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)
        elif nextlayer.data_client()[:1] == bytes([TLS_HANDSHAKE]):
            server_tls = layers.ServerTLSLayer(context)
            server_tls.child_layer = layers.ClientTLSLayer(context)
            nextlayer.layer = server_tls
        else:  # not TLS: parsed as HTTP, then refused by requestheaders (no key crosses in clear)
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not is_forward(flow.client_conn) or flow.response or flow.error or not flow.live:
            return
        try:
            request = flow.request
            refusal = self.rules().request_refusal(
                request.host, request.port, flow.client_conn.tls, request.method, request.path
            )
            if refusal is not None:
                logger.info(
                    "refused %s %s:%d%s on the forward listener from %s",
                    request.method,
                    request.host,
                    request.port,
                    request.path.partition("?")[0],
                    _peer(flow.client_conn),
                )
                refuse(flow, refusal)
                return
            key = proxy_key(
                request.headers.get("proxy-authorization") or self._tunnel_credentials.get(flow.client_conn.id)
            )
            if key is not None:
                request.headers.pop("x-api-key", None)
                request.headers["authorization"] = f"Bearer {key}"
        except Exception:  # fail closed: a forward flow the rules did not pass is never served
            logger.exception("forward-proxy check failed; refusing the request")
            refuse(flow, internal_error())

    def client_disconnected(self, client: connection.Client) -> None:
        if is_forward(client):
            self._tunnel_credentials.pop(client.id, None)
            self._passed.pop(client.id, None)


def _peer(client: connection.Client) -> str:
    return str(client.peername[0]) if client.peername else "?"
