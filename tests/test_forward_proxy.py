"""First-party mode's rules (relay_core/forward.py), its settings, the ForwardProxy addon's hooks in-process, and
`relay ca`. The real Claude Code CLI and real relay processes through the forward listener: test_forward_proxy_e2e.py.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from mitmproxy import connection
from mitmproxy import http
from mitmproxy.proxy import events
from mitmproxy.proxy import layer
from mitmproxy.proxy import layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from mitmproxy.test import tutils
from pydantic import ValidationError

from addons.client_timeouts import ClientTimeouts
from addons.forward_proxy import ForwardProxy
from addons.relay_runtime import RelayRuntime
from relay_core.admin.service import AdminService
from relay_core.forward import RAW_TUNNEL
from relay_core.forward import ForwardRules
from relay_core.forward import Tunnel
from relay_core.forward import parse_host_port
from relay_core.forward import proxy_key
from relay_core.listener import forward_proxy_warning
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal

RULES = ForwardRules(
    intercept_hosts=frozenset({"api.anthropic.com"}), allow=frozenset({("statsig.example", 443), ("::1", 8443)})
)
GEMINI_PATH = "/gemini/v1beta/models/gemini-2.5-pro:generateContent"
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# --- the rules ------------------------------------------------------------------------------------------------


def test_a_connect_is_intercepted_only_for_an_intercept_host_on_443() -> None:
    assert RULES.connect("api.anthropic.com", 443) is Tunnel.INTERCEPT
    assert RULES.connect("API.Anthropic.com.", 443) is Tunnel.INTERCEPT  # names compare normalised
    assert RULES.connect("api.anthropic.com", 80) is Tunnel.REFUSE  # the relay serves HTTPS under the name, no more
    assert RULES.connect("api.anthropic.com", 8443) is Tunnel.REFUSE
    assert RULES.connect("statsig.example", 443) is Tunnel.PASS
    assert RULES.connect("statsig.example", 8443) is Tunnel.REFUSE  # a listed host on another port is not listed
    assert RULES.connect("::1", 8443) is Tunnel.PASS
    for host, port in (("example.com", 443), ("127.0.0.1", 8080), ("evil.api.anthropic.com", 443), ("", 443)):
        assert RULES.connect(host, port) is Tunnel.REFUSE, (host, port)


def test_host_entries_parse_as_host_or_host_port() -> None:
    assert parse_host_port("Example.ORG") == ("example.org", 443)
    assert parse_host_port("example.org:8443") == ("example.org", 8443)
    assert parse_host_port("[::1]:8443") == ("::1", 8443)
    assert parse_host_port("[::1]") == ("::1", 443)
    for bad in ("http://x", "x:y", "x:0", "x:70000", "", "a b", "*.example.org", "user@host", "[::1]x"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_only_the_api_is_served_inside_an_intercepted_tunnel() -> None:
    def outcome(method: str, path: str, host: str = "api.anthropic.com", port: int = 443, tls: bool = True):
        error = RULES.request_refusal(host, port, tls, method, path)
        return None if error is None else error.status

    # What Claude Code sends (and the telemetry the relay answers itself) goes on to Auth and the router.
    assert outcome("POST", "/v1/messages?beta=true") is None
    assert outcome("POST", "/v1/messages/count_tokens?beta=true") is None
    assert outcome("GET", "/v1/models") is None
    assert outcome("POST", "/api/event_logging/batch") is None
    assert outcome("POST", "/api/event_logging/v2/batch") is None  # what Claude Code sends api.anthropic.com
    assert outcome("GET", "/api/unknown") is None  # answered 404 by ServiceEndpoints as on the base URL
    # The relay's own endpoints belong to the base-URL listener; other protocols' paths to their own hosts.
    for method, path in (("GET", "/health"), ("HEAD", "/"), ("GET", "/metrics"), ("GET", "/relay/"),
                         ("GET", "/relay/usage"), ("POST", "/relay/sign-in"), ("GET", "/metrics/")):  # fmt: skip
        assert outcome(method, path) == 404, path
    assert outcome("POST", GEMINI_PATH) == 404
    gemini = RULES.request_refusal("api.anthropic.com", 443, True, "POST", GEMINI_PATH + "?key=rk-secret")
    assert gemini is not None and "rk-secret" not in gemini.message  # a key in the query is never echoed
    # Anything that did not come through an intercepted tunnel: absolute-form plain HTTP, other hosts.
    assert outcome("GET", "/", host="example.com", port=80, tls=False) == 403
    assert outcome("POST", "/v1/messages", port=80, tls=False) == 403
    assert outcome("POST", "/v1/messages", tls=False) == 403  # plain HTTP inside a tunnel: the key would be in clear
    assert outcome("GET", "/health", host="127.0.0.1", port=8080, tls=False) == 403
    assert outcome("POST", "/v1/messages", host="example.com") == 403


def test_proxy_authorization_carries_a_team_key_as_basic_or_bearer() -> None:
    assert proxy_key(basic("anyone:rk-secret")) == "rk-secret"
    assert proxy_key(basic("rk-only")) == "rk-only"  # http://KEY@relay:port
    assert proxy_key(basic("rk-user:")) == "rk-user"
    assert proxy_key("Bearer rk-bearer") == "rk-bearer"
    assert proxy_key("bearer  rk-spaced ") == "rk-spaced"
    for bad in (None, "", "Basic", "Basic !!notbase64", "Digest abc", "Bearer ", basic(":"), "Basic " + "//79"):
        assert proxy_key(bad) is None, bad


def test_forward_settings_validate_and_read_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.forward_listen is None
    assert defaults.forward_intercept_hosts == ["api.anthropic.com"] and defaults.forward_allow_hosts == []
    monkeypatch.setenv("RELAY_FORWARD_LISTEN", "127.0.0.1:8443")
    monkeypatch.setenv("RELAY_FORWARD_ALLOW_HOSTS", "statsig.example, other.example:8443")
    monkeypatch.setenv("RELAY_FORWARD_INTERCEPT_HOSTS", '["api.anthropic.com", "api-staging.example"]')
    settings = Settings()
    assert (settings.forward_host, settings.forward_port) == ("127.0.0.1", 8443)
    assert settings.forward_allow_hosts == ["statsig.example", "other.example:8443"]
    rules = ForwardRules.from_settings(settings)
    assert rules.allow == {("statsig.example", 443), ("other.example", 8443)}
    assert rules.intercept_hosts == {"api.anthropic.com", "api-staging.example"}
    monkeypatch.delenv("RELAY_FORWARD_ALLOW_HOSTS")
    monkeypatch.delenv("RELAY_FORWARD_INTERCEPT_HOSTS")
    for bad in (
        {"forward_listen": "8443"},
        {"forward_listen": "127.0.0.1:8080", "listen": "127.0.0.1:8080"},  # one port cannot be both
        {"forward_allow_hosts": ["https://statsig.example"]},
        {"forward_intercept_hosts": ["api.anthropic.com/v1"]},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]


# --- the addon in-process --------------------------------------------------------------------------------------


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings, forward_allow_hosts=["statsig.example"]) as runtime:
        yield runtime


def forward_client() -> connection.Client:
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse("regular@127.0.0.1:0")
    return client


def connect_flow(host: str, port: int = 443, proxy_authorization: str | None = None) -> http.HTTPFlow:
    headers = [(b"proxy-authorization", proxy_authorization.encode())] if proxy_authorization else []
    request = tutils.treq(
        method=b"CONNECT", scheme=b"", host=host, port=port, path=b"", authority=f"{host}:{port}".encode(),
        headers=http.Headers(headers), content=b"",
    )  # fmt: skip
    flow = tflow.tflow(client_conn=forward_client(), req=request)
    flow.client_conn.timestamp_end = None
    return flow


def tunnel_request(
    path: str, headers: dict[str, str], host: str = "api.anthropic.com", tls: bool = True, method: str = "POST"
) -> http.HTTPFlow:
    request = tutils.treq(
        host=host, port=443, scheme=b"https", method=method.encode(), path=path.encode(), content=b"{}",
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers.items()]),
    )  # fmt: skip
    client = forward_client()
    client.tls = tls
    flow = tflow.tflow(client_conn=client, req=request)
    flow.client_conn.timestamp_end = None
    return flow


async def test_connect_refusals_are_403_or_407_in_anthropics_shape_and_close(runtime: Runtime) -> None:
    addon = ForwardProxy(RelayRuntime(runtime))
    key = await add_key(runtime, "alice")
    with taddons.context(addon):
        elsewhere = connect_flow("example.com", proxy_authorization=basic(f"alice:{key}"))
        await addon.http_connect(elsewhere)
        no_key = connect_flow("statsig.example")
        await addon.http_connect(no_key)
        wrong_key = connect_flow("statsig.example", proxy_authorization=basic("alice:rk-wrong"))
        await addon.http_connect(wrong_key)
        with_key = connect_flow("statsig.example", proxy_authorization=basic(f"alice:{key}"))
        await addon.http_connect(with_key)
        intercepted = connect_flow("api.anthropic.com", proxy_authorization=f"Bearer {key}")
        await addon.http_connect(intercepted)
        plain = connect_flow("api.anthropic.com")
        await addon.http_connect(plain)
    status, kind, message = refusal(elsewhere)  # a key makes no difference to a host that is not listed
    assert (status, kind) == (403, "permission_error") and "example.com:443" in message
    assert elsewhere.response is not None and elsewhere.response.headers["connection"] == "close"
    for refused in (no_key, wrong_key):
        status, kind, message = refusal(refused)
        assert (status, kind) == (407, "authentication_error") and "Proxy-Authorization" in message
        assert refused.response is not None
        assert refused.response.headers["proxy-authenticate"] == 'Basic realm="claude-relay"'
    assert with_key.response is None and with_key.metadata[RAW_TUNNEL] is True  # mitmproxy answers 200
    assert intercepted.response is None and plain.response is None  # no credentials needed to reach the API
    assert RAW_TUNNEL not in intercepted.metadata
    assert addon._passed == {with_key.client_conn.id: {("statsig.example", 443)}}
    addon.client_disconnected(with_key.client_conn)
    assert addon._passed == {}


async def test_a_disabled_key_opens_no_tunnel(runtime: Runtime) -> None:
    addon = ForwardProxy(RelayRuntime(runtime))
    key = await add_key(runtime, "off")
    await AdminService(runtime).keys.set_enabled("off", False)
    with taddons.context(addon):
        flow = connect_flow("statsig.example", proxy_authorization=f"Bearer {key}")
        await addon.http_connect(flow)
    assert refusal(flow)[0] == 407


async def test_reverse_mode_flows_are_left_alone(runtime: Runtime) -> None:
    addon = ForwardProxy(RelayRuntime(runtime))
    with taddons.context(addon):
        flow = tunnel_request(
            "/health", {"proxy-authorization": "Bearer rk-x"}, host="relay.invalid", tls=False, method="GET"
        )
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@127.0.0.1:0")
        addon.requestheaders(flow)
        await addon.http_connect(flow)
    assert flow.response is None
    assert flow.request.headers["proxy-authorization"] == "Bearer rk-x" and "authorization" not in flow.request.headers


async def test_inside_a_tunnel_a_proxy_key_stands_in_for_the_requests_credential(runtime: Runtime) -> None:
    addon = ForwardProxy(RelayRuntime(runtime))
    with taddons.context(addon):
        connect = connect_flow("api.anthropic.com", proxy_authorization=basic("me:rk-from-connect"))
        await addon.http_connect(connect)
        # A request of that tunnel (same client connection) with a placeholder API key of its own.
        inner = tunnel_request("/v1/messages", {"x-api-key": "placeholder"})
        inner.client_conn = connect.client_conn
        inner.client_conn.tls = True
        addon.requestheaders(inner)
        # Its own Proxy-Authorization wins over the tunnel's; a request without any keeps its own credential.
        own = tunnel_request("/v1/messages", {"proxy-authorization": "Bearer rk-own", "authorization": "Bearer x"})
        addon.requestheaders(own)
        untouched = tunnel_request("/v1/messages", {"authorization": "Bearer rk-claude-code"})
        addon.requestheaders(untouched)
        health = tunnel_request("/health", {}, method="GET")
        addon.requestheaders(health)
        clear = tunnel_request("/v1/messages", {"authorization": "Bearer rk-x"}, tls=False)
        addon.requestheaders(clear)
    assert inner.response is None
    assert (
        inner.request.headers["authorization"] == "Bearer rk-from-connect" and "x-api-key" not in inner.request.headers
    )
    assert own.request.headers["authorization"] == "Bearer rk-own"
    assert untouched.request.headers["authorization"] == "Bearer rk-claude-code"
    assert refusal(health)[:2] == (404, "not_found_error")
    assert refusal(clear)[:2] == (403, "permission_error")


def next_layer_for(addon: ForwardProxy, client: connection.Client, data: bytes, *, decrypted: bool = False):
    """The layer ForwardProxy picks for a tunnel's first bytes, in the stack mitmproxy builds for a CONNECT
    (HttpProxy, the proxy's HttpLayer, its stream) and, once the client's TLS ended, the two TLS layers."""
    context = Context(client, taddons.context().options)
    context.server = connection.Server(address=("api.anthropic.com", 443))
    layers.modes.HttpProxy(context)
    layers.HttpLayer(context, HTTPMode.regular)
    if decrypted:
        layers.ClientTLSLayer(context)
    nextlayer = layer.NextLayer(context)
    nextlayer.events.append(events.DataReceived(client, data))
    addon.next_layer(nextlayer)
    return nextlayer.layer


async def test_inside_tunnels_the_relay_picks_the_layers(runtime: Runtime) -> None:
    addon = ForwardProxy(RelayRuntime(runtime))
    client = forward_client()
    with taddons.context(addon):
        tls = next_layer_for(addon, client, TLS_CLIENT_HELLO_START)
        decrypted = next_layer_for(addon, client, b"\x00\x01raw bytes", decrypted=True)
        plain = next_layer_for(addon, client, b"SSH-2.0-OpenSSH\r\n")
        addon._passed[client.id] = {("api.anthropic.com", 443)}  # as if the host were allowed and keyed
        passed = next_layer_for(addon, client, TLS_CLIENT_HELLO_START)
        # The proxy's own first layer (no tunnel yet) is mitmproxy's decision.
        root = Context(client, taddons.context().options)
        layers.modes.HttpProxy(root)
        first = layer.NextLayer(root)
        first.events.append(events.DataReceived(client, b"CONNECT api.anthropic.com:443 HTTP/1.1\r\n"))
        addon.next_layer(first)
    assert isinstance(tls, layers.ServerTLSLayer) and isinstance(tls.child_layer, layers.ClientTLSLayer)
    # Never a raw pass-through to the real host: decrypted or not, anything else is parsed as HTTP (and refused).
    assert isinstance(decrypted, layers.HttpLayer) and decrypted.mode is HTTPMode.transparent
    assert isinstance(plain, layers.HttpLayer)
    assert isinstance(passed, layers.TCPLayer) and passed.flow is None  # untouched: not even a TCP flow
    assert first.layer is None


async def test_a_raw_tunnel_has_no_request_deadline(runtime: Runtime) -> None:
    timeouts = ClientTimeouts(RelayRuntime(runtime))
    with taddons.context(timeouts):
        raw, intercepted = connect_flow("statsig.example"), connect_flow("api.anthropic.com")
        raw.metadata[RAW_TUNNEL] = True
        for flow in (raw, intercepted):
            timeouts.client_connected(flow.client_conn)
            timeouts.http_connected(flow)
    assert raw.client_conn.id not in timeouts._deadlines
    assert intercepted.client_conn.id in timeouts._deadlines  # its first request is awaited like a next one
    for flow in (raw, intercepted):
        timeouts.client_disconnected(flow.client_conn)


# --- relay ca ---------------------------------------------------------------------------------------------------


def test_relay_ca_prints_the_path_and_pem_and_keeps_the_key_private(
    cli: Callable[..., str], relay_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    confdir = tmp_path / "data" / "mitmproxy"
    shown = cli("ca")  # creates the CA on first use
    cert_path = confdir / "mitmproxy-ca-cert.pem"
    pem = cert_path.read_text()
    assert f"path: {cert_path}" in shown and shown.endswith(pem)
    assert "PRIVATE KEY" not in shown
    certificate = x509.load_pem_x509_certificate(pem.encode())
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cli("ca", "--pem") == pem  # for `relay ca --pem > relay-ca.pem`
    record = json.loads(cli("ca", "--format", "json"))
    assert record["path"] == str(cert_path) and record["pem"] == pem and len(record["sha256"]) == 64
    for name in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):  # the files holding the private key
        assert stat.S_IMODE((confdir / name).stat().st_mode) == 0o600, name
    # A key file made readable by others (a careless restore) is made private again; the CA stays the same.
    (confdir / "mitmproxy-ca.pem").chmod(0o644)
    assert cli("ca", "--pem") == pem
    assert stat.S_IMODE((confdir / "mitmproxy-ca.pem").stat().st_mode) == 0o600


def test_a_forward_listener_beyond_loopback_that_tunnels_for_keys_warns_at_start() -> None:
    assert forward_proxy_warning("127.0.0.1", ["statsig.example"]) is None  # keys stay on this machine
    assert forward_proxy_warning("0.0.0.0", []) is None  # intercepted tunnels carry keys inside TLS
    warning = forward_proxy_warning("0.0.0.0", ["statsig.example"])
    assert warning is not None and "Proxy-Authorization" in warning and "in clear" in warning
