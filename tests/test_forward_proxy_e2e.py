"""First-party mode end to end: real relay processes with a forward-proxy listener next to the base URL.

The real Claude Code CLI (pinned in tests/clients) runs with its default base URL (api.anthropic.com) and
HTTPS_PROXY at the forward listener, trusting the relay's CA: the relay intercepts its CONNECT, relays each
request to the fake upstream on an account as it relays base-URL traffic, and the upstream sees what Claude
Code sends Anthropic itself. Also: the CONNECT policy over raw sockets (403 for hosts not listed, 407 for a
listed one without a key, untouched tunnels for a listed one with a key), and one key's limits shared by
both listeners under each engine. Loopback only; nothing resolves or reaches api.anthropic.com.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from relay_core.models import LimitWindow
from relay_core.models import TeamKey
from tests.support.admin import Admin
from tests.support.certificates import make_pair
from tests.support.claude_code import FINAL_TEXT
from tests.support.claude_code import SONNET_45
from tests.support.claude_code import TOOL_COMMAND
from tests.support.claude_code import TOOL_MARKER
from tests.support.claude_code import ClaudeCode
from tests.support.claude_code import ClientTap
from tests.support.claude_code import ScriptedApi
from tests.support.claude_code import install_problem
from tests.support.claude_code import list_price
from tests.support.claude_code import pinned_version
from tests.support.claude_code import tool_result_text
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Seen
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.e2e  # every test here starts relay processes

MODEL = "claude-sonnet-4-5-20250929"
PROMPT = "Run the marker command and tell me what it printed."
API_HOST = "api.anthropic.com"
OAUTH_BETA = "oauth-2025-04-20"
ACCOUNT_TOKEN = "sk-ant-oat01-forward-e2e-" + "f" * 40
CONSOLE_KEY = "sk-ant-api03-forward-e2e"
# Betas Claude Code v2.1.332 adds only when it talks to api.anthropic.com itself (measured through a plain
# forward proxy, the same turn as behind a base URL); issue 21 lists a fifth, mid-conversation-system-clear-
# at-2026-08-21, which this version did not send in a -p turn.
FIRST_PARTY_BETAS = (
    "prompt-caching-scope-2026-01-05",
    "cache-diagnosis-2026-04-07",
    "thinking-binding-controls-2026-08-01",
    "tool-provenance-2026-10-26",
)
BILLING = re.compile(
    rf"x-anthropic-billing-header: cc_version={re.escape(pinned_version())}\.[0-9a-f]{{3}}; cc_entrypoint=[a-z-]+; "
    r"cch=[0-9a-f]{5}; (?:cc_prev_req=\S+; )?cc_prompt_id=[0-9a-f-]{36};"
)
START = 60  # seconds a loaded machine may take to start a relay


def forward_env(**more: str) -> dict[str, str]:
    return {"RELAY_FORWARD_LISTEN": "127.0.0.1:0", **more}


def relay_ca(relay_env: dict[str, str]) -> Path:
    """The CA certificate the relay mints tunnel certificates with (`relay ca` prints it)."""
    return Path(relay_env["RELAY_DATA_DIR"]) / "mitmproxy" / "mitmproxy-ca-cert.pem"


def messages_requests(upstream: FakeUpstream) -> list[Seen]:
    return [s for s in upstream.requests if s.path.split("?")[0] == "/v1/messages"]


def betas(seen: Seen) -> list[str]:
    return seen.headers.get("anthropic-beta", "").split(",")


# --- acceptance 1 and 2: the real Claude Code through the forward listener ------------------------------------


@pytest.fixture
def claude_installed() -> None:
    problem = install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


def test_claude_code_through_the_forward_proxy_sends_the_first_party_shape(
    claude_installed: None,
    start_relay: Callable[..., RelayProcess],
    relay_env: dict[str, str],
    admin: Admin,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    relay = start_relay("serve", **forward_env())
    admin.add_account(
        "max-1", ACCOUNT_TOKEN, kind="oauth", expires_at=time.time() + 8 * 3600, allow_other_clients=False
    )
    team_key = admin.create_key("team")
    api = ScriptedApi()
    upstream.handler = api
    tap = ClientTap(relay.forward_port or 0).start()  # the bytes the CLI sends the proxy: CONNECT, then TLS
    try:
        claude = ClaudeCode(
            tmp_path / "home",
            tmp_path / "project",
            None,  # Claude Code's default base URL: api.anthropic.com, reached through the proxy
            team_key,
            MODEL,
            extra_env={"HTTPS_PROXY": tap.url, "NODE_EXTRA_CA_CERTS": str(relay_ca(relay_env))},
        )
        run = claude.run(PROMPT, timeout=120)
    finally:
        tap.stop()
        upstream.handler = None
    result = run.result
    assert result["subtype"] == "success" and result["is_error"] is False, run.describe()
    assert result["result"] == FINAL_TEXT and result["num_turns"] == 2

    # The CLI reached only the proxy: CONNECTs to api.anthropic.com:443 without proxy credentials, then TLS, so
    # its key never crossed in clear. With nonessential traffic off it CONNECTs to no other host.
    streams = tap.streams()
    assert streams
    for stream in streams:
        head, _, rest = stream.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert request_line == f"CONNECT {API_HOST}:443 HTTP/1.1", request_line
        assert not any(line.lower().startswith("proxy-authorization") for line in header_lines)
        assert rest[:1] == b"\x16", "no TLS inside the tunnel"
        assert team_key.encode() not in stream

    # The turn with its tool round trip, as the upstream received it: the first-party shape, on the account.
    assert api.kinds() == ["tool_call", "final"], api.kinds()
    seen = messages_requests(upstream)
    assert len(seen) == 2 and len(upstream.requests) == 2, [s.path for s in upstream.requests]
    session_id = result["session_id"]
    for request in seen:
        assert request.path == "/v1/messages?beta=true"
        assert request.headers["authorization"] == f"Bearer {ACCOUNT_TOKEN}"
        assert "x-api-key" not in request.headers and "proxy-authorization" not in request.headers
        assert not any(team_key in value for value in request.headers.values()), "the team key reached the upstream"
        assert team_key.encode() not in request.body
        assert request.headers["user-agent"].startswith(f"claude-cli/{pinned_version()} (external, ")
        assert request.headers["x-claude-code-session-id"] == session_id
        sent_betas = betas(request)
        for beta in FIRST_PARTY_BETAS:
            assert beta in sent_betas, (beta, sent_betas)
        assert sent_betas.count(OAUTH_BETA) == 1 and sent_betas[-1] == OAUTH_BETA  # added after the CLI's list
        body = request.json()
        assert BILLING.match(body["system"][0]["text"]), body["system"][0]
        assert "diagnostics" in body  # a body field only api.anthropic.com gets
        assert int(request.headers["content-length"]) == len(request.body)
    # The second request's billing line names the first answer's request id: the CLI saw the upstream's headers.
    assert "cc_prev_req=req_01RelayE2e0001;" in seen[1].json()["system"][0]["text"]
    messages = seen[1].json()["messages"]
    tool_use = next(p for p in messages[-2]["content"] if p.get("type") == "tool_use")
    assert tool_use["name"] == "Bash" and tool_use["input"]["command"] == TOOL_COMMAND
    (tool_result,) = (p for p in messages[-1]["content"] if p.get("type") == "tool_result")
    assert tool_result_text(tool_result).startswith(TOOL_MARKER)

    # Acceptance 2: the relay's bill equals Claude Code's own total_cost_usd (and the list price by hand).
    rows = admin.wait_for_requests(2, timeout=10)
    assert [(row["key"], row["requests"], row["errors"], row["unpriced"]) for row in rows] == [("team", 2, 0, 0)]
    by_hand = sum((list_price(SONNET_45, a.usage) for a in api.answered), Decimal(0))
    assert result["total_cost_usd"] == pytest.approx(float(by_hand), abs=1e-9)
    assert rows[0]["cost_usd"] == pytest.approx(result["total_cost_usd"], abs=1e-9)
    for field in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert rows[0][field] == result["usage"][field], field

    # The contrast that makes this mode worth having: the same turn through the base URL lacks all of it.
    upstream.reset()
    api = ScriptedApi()
    upstream.handler = api
    try:
        base = ClaudeCode(tmp_path / "home2", tmp_path / "project2", relay.url, team_key, MODEL).run(PROMPT)
    finally:
        upstream.handler = None
    assert base.result["result"] == FINAL_TEXT, base.describe()
    for request in messages_requests(upstream):
        assert not set(FIRST_PARTY_BETAS) & set(betas(request)), betas(request)
        assert "cch=" not in request.json()["system"][0]["text"] and "diagnostics" not in request.json()


# --- acceptance 3: the CONNECT policy -----------------------------------------------------------------------


def proxy_call(port: int, head: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """Send one request head to the forward listener; its answer's status, headers and body, and the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = header.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split(" ")[1]), headers, body, sock


def closed(sock: socket.socket, timeout: float = 5) -> bool:
    """The relay closed the connection (it answered with `connection: close`)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


class TlsEcho:
    """A TLS server on loopback with a self-signed certificate of its own that echoes what it reads."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = make_pair(directory, "echo")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(raw,), daemon=True).start()

    def _echo(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(30)
                while data := conn.recv(65536):
                    conn.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[TlsEcho]:
    server = TlsEcho(tmp_path)
    yield server
    server.stop()


def test_connect_policy_refuses_unlisted_hosts_and_tunnels_listed_ones_untouched_for_a_key(
    start_relay: Callable[..., RelayProcess],
    relay_env: dict[str, str],
    admin: Admin,
    upstream: FakeUpstream,
    echo: TlsEcho,
) -> None:
    listed = f"localhost:{echo.port}"
    relay = start_relay(
        "serve",
        **forward_env(
            RELAY_FORWARD_ALLOW_HOSTS=listed,
            RELAY_CLIENT_HEADER_TIMEOUT_S="1",  # a raw tunnel must outlive both deadlines
            RELAY_CLIENT_IDLE_TIMEOUT_S="1",
        ),
    )
    port = relay.forward_port or 0
    key = admin.create_key("alice")
    auth = {"proxy-authorization": "Basic " + base64.b64encode(f"alice:{key}".encode()).decode()}

    def connect(target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, socket.socket]:
        lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return proxy_call(port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{lines}\r\n")

    # Not listed: 403 in Anthropic's shape, with or without a key, and the connection closes. That includes the
    # relay's own base-URL port and any other service on its machine.
    for target in ("example.com:443", f"127.0.0.1:{relay.port}", f"127.0.0.1:{echo.port}", f"{API_HOST}:80"):
        for headers in (None, auth):
            status, response_headers, body, sock = connect(target, headers)
            assert status == 403, (target, status, body)
            error = json.loads(body)
            assert error["type"] == "error" and error["error"]["type"] == "permission_error"
            assert response_headers["connection"] == "close" and closed(sock)
            sock.close()
    # Plain HTTP in absolute form is never proxied, to another host or to the relay itself.
    for target in ("http://example.com/", f"http://127.0.0.1:{relay.port}/health", f"http://{API_HOST}/v1/models"):
        status, _, body, sock = proxy_call(port, f"GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert status == 403, (target, body)
        assert json.loads(body)["error"]["type"] == "permission_error"
        sock.close()

    # Listed, without a key or with a wrong one: 407 asking for proxy credentials.
    for headers in (None, {"proxy-authorization": "Basic " + base64.b64encode(b"x:rk-no").decode()}):
        status, response_headers, body, sock = connect(listed, headers)
        assert status == 407 and response_headers["proxy-authenticate"] == 'Basic realm="claude-relay"'
        assert json.loads(body)["error"]["type"] == "authentication_error"
        sock.close()

    # Listed, with the key: a tunnel the relay does not look into. The client verifies the echo server's own
    # certificate (the relay's CA would fail it), and the tunnel outlives the client deadlines set to 1 s.
    status, _, _, sock = connect(listed, auth)
    assert status == 200
    client_tls = ssl.create_default_context(cafile=str(echo.cert))
    with client_tls.wrap_socket(sock, server_hostname="localhost") as tunnel:
        tunnel.sendall(b"ping")
        assert tunnel.recv(64) == b"ping"
        time.sleep(2.5)
        tunnel.sendall(b"still open")
        assert tunnel.recv(64) == b"still open"
    assert upstream.requests == []

    # An intercepted tunnel serves the API only: the relay's own endpoints belong to the base URL.
    ca = ssl.create_default_context(cafile=str(relay_ca(relay_env)))
    with httpx2.Client(proxy=relay.forward_url, verify=ca, trust_env=False, timeout=10) as client:
        for path in ("/health", "/metrics", "/relay/usage", "/relay/"):
            answer = client.get(f"https://{API_HOST}{path}", headers={"authorization": f"Bearer {key}"})
            assert answer.status_code == 404, (path, answer.text)
        unauthenticated = client.post(f"https://{API_HOST}/v1/messages", json={"model": MODEL})
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert upstream.requests == []
    assert "refused CONNECT example.com:443 from 127.0.0.1" in relay.log()


# --- acceptance 4: both listeners, one key, one window ---------------------------------------------------------


def sdk_direct(relay: RelayProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0, timeout=20)


def sdk_forward(
    relay: RelayProcess, relay_env: dict[str, str], key: str, proxy: str | None = None
) -> anthropic.Anthropic:
    """The SDK with its default base URL through the forward listener, trusting only the relay's CA."""
    verify = ssl.create_default_context(cafile=str(relay_ca(relay_env)))
    http_client = httpx2.Client(proxy=proxy or relay.forward_url, verify=verify, trust_env=False, timeout=20)
    return anthropic.Anthropic(base_url=f"https://{API_HOST}", api_key=key, max_retries=0, http_client=http_client)


def ask(client: anthropic.Anthropic) -> Any:
    return client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def wait_clear_of_a_minute_edge() -> None:
    """Key windows are aligned to the epoch: keep the four requests inside one minute."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60.5 - into)


@pytest.mark.parametrize("engine", ["serve", "workers", "mitmdump"])
def test_both_listeners_share_one_keys_window_and_accounting(
    engine: str,
    start_relay: Callable[..., RelayProcess],
    relay_env: dict[str, str],
    admin: Admin,
    upstream: FakeUpstream,
) -> None:
    relay = start_relay(engine, **forward_env())
    admin.add_account("console-1", CONSOLE_KEY)
    key = admin.create_key("limited")

    def two_per_minute(team_key: TeamKey) -> None:
        team_key.limits.windows = [LimitWindow(seconds=60, requests=2)]

    admin.update_key("limited", two_per_minute)
    wait_clear_of_a_minute_edge()
    assert ask(sdk_direct(relay, key)).content[0].text == "Hello from the fake upstream!"
    assert ask(sdk_forward(relay, relay_env, key)).content[0].text == "Hello from the fake upstream!"
    for client in (sdk_forward(relay, relay_env, key), sdk_direct(relay, key)):  # the window is full for both
        with pytest.raises(anthropic.RateLimitError) as refused:
            ask(client)
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert [seen.headers.get("x-api-key") for seen in upstream.requests] == [CONSOLE_KEY] * 2
    rows = admin.wait_for_requests(2, timeout=10)
    assert [(row["key"], row["requests"]) for row in rows] == [("limited", 2)]

    # The key in the proxy URL (Proxy-Authorization of the CONNECT) wins over a placeholder API key.
    other = admin.create_key("proxy-user")
    proxy = f"http://anyone:{other}@127.0.0.1:{relay.forward_port}"
    assert ask(sdk_forward(relay, relay_env, "placeholder", proxy=proxy)).content[0].text
    rows = admin.wait_for_requests(3, timeout=10)
    assert {row["key"]: row["requests"] for row in rows} == {"limited": 2, "proxy-user": 1}
    assert upstream.requests[-1].headers.get("x-api-key") == CONSOLE_KEY
    assert not any(other in value for seen in upstream.requests for value in seen.headers.values())


def test_a_relay_with_its_own_certificate_still_intercepts_with_its_ca(
    start_relay: Callable[..., RelayProcess],
    relay_env: dict[str, str],
    admin: Admin,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """tls_cert answers every name on the base URL; api.anthropic.com inside a tunnel keeps the CA's certificate."""
    cert, key_file = make_pair(tmp_path / "tls")
    relay = start_relay("serve", args=["--tls-cert", str(cert), "--tls-key", str(key_file)], scheme="https",
                        **forward_env())  # fmt: skip
    admin.add_account("console-1", CONSOLE_KEY)
    key = admin.create_key("team")
    assert ask(sdk_forward(relay, relay_env, key)).content[0].text == "Hello from the fake upstream!"
    verify = ssl.create_default_context(cafile=str(cert))
    direct = anthropic.Anthropic(
        base_url=relay.url, api_key=key, max_retries=0, http_client=httpx2.Client(verify=verify)
    )
    assert ask(direct).content[0].text == "Hello from the fake upstream!"
    assert len(upstream.requests) == 2
