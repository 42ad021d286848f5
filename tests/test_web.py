"""`relay web`: the relay under mitmweb. Its UI never holds a secret, the relay still works, memory stays bounded.

Everything is real: `relay web` as a process, the test Valkey, the fake upstream, the official SDK as
the client, and mitmweb's own HTTP API and /updates websocket read the way its UI reads them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import anthropic
import pytest
from tornado import httpclient
from tornado import websocket

from relay_core.models import LimitWindow
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "hello"}]
LOGIN_URL = re.compile(r"Web server listening at http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WebUI:
    """mitmweb's HTTP API, logged in with `Authorization: Bearer <password or token>`."""

    port: int
    password: str

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {self.password}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def status(self, path: str, password: str | None) -> int:
        headers = {"Authorization": f"Bearer {password}"} if password else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def send(self, method: str, path: str, body: Any = None) -> int:
        """A change, as the UI makes one: JSON, with tornado's XSRF cookie and header (any matching hex pair)."""
        xsrf = secrets.token_hex(16)
        headers = {"Authorization": f"Bearer {self.password}", "Cookie": f"_mitmproxy_xsrf={xsrf}"}
        headers |= {"X-XSRFToken": xsrf, "Content-Type": "application/json"}
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def flows(self) -> list[dict[str, Any]]:
        return json.loads(self.get("/flows"))

    def everything(self) -> bytes:
        """Every flow as the UI can show or export it: list, bodies, rendered bodies, dump, event log."""
        parts = [self.get("/flows"), self.get("/flows/dump"), self.get("/events")]
        for flow in self.flows():
            for message in ("request", "response"):
                if message in flow and flow[message]["contentLength"] is not None:
                    parts.append(self.get(f"/flows/{flow['id']}/{message}/content.data"))
                    for view in ("auto", "raw"):
                        parts.append(self.get(f"/flows/{flow['id']}/{message}/content/{view}.json"))
        return b"\n".join(parts)


@dataclass
class Updates:
    """Everything mitmweb pushes over its /updates websocket, collected on a thread of its own."""

    ui: WebUI
    messages: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._connected = threading.Event()
        self._connection: websocket.WebSocketClientConnection | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._collect(),), daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "could not connect to mitmweb's /updates websocket"

    async def _collect(self) -> None:
        request = httpclient.HTTPRequest(
            f"ws://127.0.0.1:{self.ui.port}/updates", headers={"Authorization": f"Bearer {self.ui.password}"}
        )
        self._connection = await websocket.websocket_connect(request)
        self._connected.set()
        while (message := await self._connection.read_message()) is not None:
            self.messages.append(message if isinstance(message, bytes) else message.encode())

    def close(self) -> bytes:
        assert self._connection is not None
        self._loop.call_soon_threadsafe(self._connection.close)
        self._thread.join(10)
        return b"\n".join(self.messages)


@pytest.fixture
def start_web(start_relay: Callable[..., RelayProcess]) -> Callable[..., tuple[RelayProcess, WebUI]]:
    def start(password: str | None = None, **env: str) -> tuple[RelayProcess, WebUI]:
        port = free_port()
        if password:
            env["RELAY_WEB_PASSWORD"] = password
        relay = start_relay("web", RELAY_WEB_LISTEN=f"127.0.0.1:{port}", **env)
        if password is None:
            assert relay.wait_for_output("Web server listening at", timeout=10)
            match = LOGIN_URL.search(relay.log())
            assert match and int(match.group(1)) == port, relay.log()
            password = match.group(2)
        return relay, WebUI(port, password)

    return start


def sdk(relay: RelayProcess, key: str, header: str) -> anthropic.Anthropic:
    if header == "bearer":
        return anthropic.Anthropic(base_url=relay.url, auth_token=key, api_key=None, max_retries=0)
    return anthropic.Anthropic(base_url=relay.url, api_key=key, auth_token=None, max_retries=0)


def post(relay: RelayProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(relay.url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def test_web_ui_shows_redacted_copies_and_the_relay_still_works(
    start_web: Callable[..., tuple[RelayProcess, WebUI]], admin: Admin, upstream: FakeUpstream
) -> None:
    password = token()
    relay, ui = start_web(password=password)
    alice, bob = admin.create_key("alice"), admin.create_key("bob")
    oauth_token, api_key = token("sk-ant-oat01-"), token("sk-ant-api03-")
    max_account = admin.add_account("max-1", oauth_token, kind="oauth", expires_at=time.time() + 86400)
    api_account = admin.add_account("team-api", api_key, kind="console")
    admin.update_key("alice", lambda key: setattr(key, "account_id", max_account.id))
    admin.update_key("bob", lambda key: setattr(key, "account_id", api_account.id))
    # OAuth secrets in token-endpoint bodies, and a relayed answer that carries tokens
    refresh_token, code, verifier, form_code, form_verifier = (token() for _ in range(5))
    answered_access, answered_refresh = token("sk-ant-oat01-"), token("sk-ant-ort01-")
    proxy_secret, cookie_secret = token(), token()
    token_answer = json.dumps({"access_token": answered_access, "refresh_token": answered_refresh, "data": []})

    def reply(seen: Seen) -> Reply:
        if seen.path.startswith("/v1/models"):
            return Reply(body=token_answer.encode())
        return upstream.default_reply(seen)

    upstream.handler = reply
    secrets_ = [alice, bob, oauth_token, api_key, refresh_token, code, verifier, form_code, form_verifier]
    secrets_ += [answered_access, answered_refresh, proxy_secret, cookie_secret]

    assert ui.status("/flows", None) == 403
    assert ui.status("/flows", "wrong") == 403
    updates = Updates(ui)

    with sdk(relay, alice, "bearer").messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream).strip() == "Hello from the fake upstream!"
    answer = sdk(relay, alice, "bearer").messages.create(
        model=MODEL,
        max_tokens=50,
        messages=MESSAGES,
        extra_headers={"proxy-authorization": f"Basic {proxy_secret}", "cookie": f"session={cookie_secret}"},
    )
    assert answer.content[0].text == "Hello from the fake upstream!"
    answer = sdk(relay, bob, "x-api-key").messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    assert answer.content[0].text == "Hello from the fake upstream!"
    with sdk(relay, bob, "x-api-key").messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream).strip() == "Hello from the fake upstream!"
    # The client gets the upstream's answer untouched: only mitmweb's copy is masked.
    models = urllib.request.Request(relay.url + "/v1/models", headers={"x-api-key": bob})
    with urllib.request.urlopen(models, timeout=10) as response:
        assert json.loads(response.read())["access_token"] == answered_access
    token_body = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
    token_body |= {"refresh_token": refresh_token, "client_id": "9d1c250a"}
    status, _ = post(relay, "/v1/oauth/token", json.dumps(token_body).encode(), {"x-api-key": bob})
    assert status == 404  # not a relayed route: answered from its headers, its body never kept
    form = f"grant_type=authorization_code&code={form_code}&code_verifier={form_verifier}".encode()
    status, _ = post(relay, "/v1/oauth/token", form, {"authorization": f"Bearer {bob}"})
    assert status == 404

    # Upstream saw the real account credentials, never a team key.
    seen = [s for s in upstream.requests if s.path.startswith("/v1/messages")]
    assert [s.headers.get("authorization") for s in seen[:2]] == [f"Bearer {oauth_token}"] * 2
    assert [s.headers.get("x-api-key") for s in seen[2:]] == [api_key] * 2
    for request in upstream.requests:
        assert alice not in json.dumps(request.headers) and bob not in json.dumps(request.headers)
        assert "proxy-authorization" not in request.headers and "cookie" not in request.headers
    assert len(admin.wait_for_requests(4)) == 2  # usage recorded for both keys

    shown = ui.everything()
    pushed = updates.close()
    assert b'"flows/add"' in pushed and b'"flows/update"' in pushed
    for name, blob in (("mitmweb API", shown), ("websocket", pushed), ("relay output", relay.log().encode())):
        leaked = [s[:12] + "..." for s in secrets_ if s.encode() in blob]
        assert not leaked, f"{name} holds secrets starting {leaked}"

    flows = ui.flows()
    assert len(flows) == 7
    headers = [dict(f["request"]["headers"]) for f in flows]
    assert [h.get("authorization") for h in headers[:2]] == ["Bearer sk-ant-oat01-[redacted]"] * 2
    assert [h.get("x-api-key") for h in headers[2:5]] == ["sk-ant-api03-[redacted]"] * 3
    # The router drops client credentials; the copies pushed while the flows were in flight had them masked.
    assert "proxy-authorization" not in headers[1] and "cookie" not in headers[1]
    assert b'["proxy-authorization", "Basic [redacted]"]' in pushed and b'["cookie", "[redacted]"]' in pushed
    masked_keys = (b'["authorization", "bearer rk-[redacted]"]', b'["x-api-key", "rk-[redacted]"]')
    assert all(masked in pushed.lower() for masked in masked_keys)
    assert (headers[5]["X-Api-Key"], headers[6]["Authorization"]) == ("rk-[redacted]", "Bearer rk-[redacted]")
    upstream_port = int(upstream.url.rsplit(":", 1)[1])
    assert [f["request"]["port"] for f in flows] == [upstream_port] * 5 + [9] * 2  # as routed; 404s never were
    assert [f["response"]["status_code"] for f in flows] == [200] * 5 + [404] * 2
    assert "key alice" in flows[0]["comment"] and "account max-1" in flows[0]["comment"]
    assert json.loads(ui.get(f"/flows/{flows[4]['id']}/response/content.data"))["access_token"] == "[redacted]"
    # the 404s were answered from their headers (addons/early_answers.py): their bodies were never kept
    assert ui.get(f"/flows/{flows[5]['id']}/request/content.data") == b""
    assert ui.get(f"/flows/{flows[6]['id']}/request/content.data") == b""


def test_web_ui_cannot_intercept_nor_replay(
    start_web: Callable[..., tuple[RelayProcess, WebUI]], admin: Admin, upstream: FakeUpstream
) -> None:
    """Both would need the live flow or put an account credential into a kept copy; mitmweb refuses them."""
    relay, ui = start_web(password=token())
    key, api_key = admin.create_key("carol"), token("sk-ant-api03-")
    # One request a minute: a replay that reached admission would get 429 there, and count.
    admin.update_key("carol", lambda k: k.limits.windows.append(LimitWindow(seconds=60, requests=1)))
    admin.add_account("team-api", api_key, kind="console")
    sdk(relay, key, "x-api-key").messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    (flow,) = ui.flows()

    assert ui.send("PUT", "/options", {"intercept": "~q"}) == 400
    # An admin pastes a valid team key into the kept copy and replays it: refused before admission.
    headers = [[name, key if name.lower() == "x-api-key" else value] for name, value in flow["request"]["headers"]]
    assert ui.send("PUT", f"/flows/{flow['id']}", {"request": {"headers": headers}}) == 200
    assert ui.send("POST", f"/flows/{flow['id']}/replay") == 200
    deadline = time.monotonic() + 10
    while "response" not in (replayed := ui.flows()[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replayed["response"]["status_code"] == 403
    assert b"relay web does not replay" in ui.get(f"/flows/{flow['id']}/response/content.data")
    assert len(upstream.requests) == 1
    assert api_key.encode() not in ui.get("/flows") + ui.get("/flows/dump")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def load(relay: RelayProcess, key: str, requests: int, concurrency: int = 10) -> None:
    """`requests` small non-streamed messages on `concurrency` kept-alive connections."""
    body = json.dumps({"model": MODEL, "max_tokens": 10, "messages": MESSAGES}).encode()
    headers = {"x-api-key": key, "content-type": "application/json", "anthropic-version": "2023-06-01"}

    def worker(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        try:
            for _ in range(count):
                connection.request("POST", "/v1/messages", body, headers)
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
        finally:
            connection.close()

    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        for result in [pool.submit(worker, share) for share in shares]:
            result.result()


def test_web_memory_stays_bounded_over_5000_flows(
    start_web: Callable[..., tuple[RelayProcess, WebUI]], admin: Admin, upstream: FakeUpstream
) -> None:
    """Each answer has a 24 KB body. Kept without bounds, 4,000 more flows would add at least
    4,000 x 16 KiB (the body cap) = 62 MiB; with 500 flows kept, RSS must stay within 20 MiB of what
    it was once the view was full (room for the event log's 4,000 request-log lines and allocator slack)."""
    relay, ui = start_web(RELAY_WEB_MAX_FLOWS="500", RELAY_WEB_MAX_BODY_BYTES="16384")  # login token from the log
    key = admin.create_key("load")
    admin.add_account("team-api", token("sk-ant-api03-"), kind="console")
    answer = message_json(MODEL, upstream.usage, text="x" * 24_000)
    upstream.handler = lambda seen: Reply(body=answer)

    started = time.monotonic()
    load(relay, key, 1000)  # the view fills up and starts evicting
    warm = rss_mib(relay.pid)
    load(relay, key, 4000)
    end = rss_mib(relay.pid)
    elapsed = time.monotonic() - started
    print(f"relay web: 5000 flows in {elapsed:.1f}s, RSS {warm:.1f} MiB after 1000 flows, {end:.1f} MiB after 5000")

    assert len(upstream.requests) == 5000
    assert end - warm < 20, (warm, end)
    flows = ui.flows()
    assert len(flows) == 500
    body = ui.get(f"/flows/{flows[-1]['id']}/response/content.data")
    assert len(answer) > 16384 and len(body) < 16384 + 100 and b"relay web kept 16384 of" in body
    assert relay.alive()


def test_an_error_message_is_masked_in_the_kept_copy() -> None:
    """Errors can quote what a peer sent; the copy mitmweb keeps shows the credential's kind, not its value."""
    from mitmproxy.test import tflow

    from addons.web_redaction import WebRedaction

    flow = tflow.tflow(err=True)
    flow.error.msg = "peer closed after rejecting rk-ABCDEFGHIJKLMNOP and sk-ant-oat01-QRSTUVWXYZ012345"
    copy = tflow.tflow()
    WebRedaction()._fill(copy, flow, with_request=True)
    assert copy.error is not None
    assert "ABCDEFGHIJKLMNOP" not in copy.error.msg and "QRSTUVWXYZ012345" not in copy.error.msg
    assert "rk-[redacted]" in copy.error.msg and "sk-ant-oat01-[redacted]" in copy.error.msg
    assert "ABCDEFGHIJKLMNOP" in flow.error.msg  # the live flow is never changed
