"""In-process helpers for the addon tests: a real Runtime on the session's Valkey under a key prefix of its own,
and mitmproxy test flows (tflow) already through admission and routing, as the response-side addons meet them."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.health import AccountHealth
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.oauth import OAuthConfig
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import message_json
from tests.support.request_side_flows import BASE_URL_MODE

MODEL = "claude-opus-4-8"
TEAM_KEY = "rk-team-key-0123456789abcdef"  # the secret a client would present (never to be logged)
ACCOUNT_TOKEN = "sk-ant-oat01-account-token-0123456789"  # the account's upstream credential
# Nothing here refreshes a token on purpose; should a code path try, it meets a closed loopback port at once.
UNUSED_TOKEN_URL = "http://127.0.0.1:9/v1/oauth/token"


@asynccontextmanager
async def fresh_runtime(valkey_url: str, data_dir: Path, **overrides: Any) -> AsyncIterator[Runtime]:
    """A Runtime like a relay process holds, on the test Valkey under a prefix no other test uses; every key
    written under it is deleted afterwards. `overrides` are Settings fields (validated)."""
    prefix = "addontest-" + secrets.token_hex(6)
    settings = Settings(
        redis_url=valkey_url,
        data_dir=data_dir,
        secret_key=secrets.token_urlsafe(40),
        key_prefix=prefix,
        oauth=OAuthConfig(token_url=UNUSED_TOKEN_URL, timeout_s=1),
        **overrides,
    )
    runtime = Runtime(settings)
    try:
        yield runtime
    finally:
        await runtime.drain()
        keys = [key async for key in runtime.store.redis.scan_iter(match=runtime.store.tag + ":*", count=1000)]
        if keys:
            await runtime.store.redis.delete(*keys)
        await runtime.close()


def team_key(name: str = "alice", **fields: Any) -> TeamKey:
    return TeamKey(name=name, key_hash=secrets.token_hex(16), hint=TEAM_KEY[:7], **fields)


def account(runtime: Runtime, name: str = "max-1", kind: AccountKind = AccountKind.OAUTH, **fields: Any) -> Account:
    record = Account(name=name, kind=kind, sealed_secret="", **fields)
    record.sealed_secret = runtime.keyring.seal(ACCOUNT_TOKEN, record.id)
    return record


def request_body(model: str = MODEL, stream: bool = False, text: str = "hello") -> bytes:
    return json.dumps(
        {"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]}
    ).encode()


def routed_flow(
    key: TeamKey,
    served_by: Account,
    *,
    accounts: list[Account] | None = None,
    health: dict[str, AccountHealth] | None = None,
    body: bytes | None = None,
    session: str | None = None,
) -> http.HTTPFlow:
    """A Messages request admitted for `key` and routed to `served_by`, as the Router leaves it, with the
    account's credential in its headers as it went upstream (the client's team key in `x-relay-client-key`,
    a header only these tests add, so a test can check that neither ever shows up anywhere)."""
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = BASE_URL_MODE
    flow.request.method = "POST"
    flow.request.path = "/v1/messages"
    flow.request.headers["authorization"] = f"Bearer {ACCOUNT_TOKEN}"
    flow.request.headers["x-relay-client-key"] = TEAM_KEY
    flow.request.headers["content-type"] = "application/json"
    flow.request.content = body if body is not None else request_body()
    protocol = AnthropicProtocol()
    state = FlowState(
        route=AnthropicRoute.MESSAGES,
        protocol=protocol,
        key=key,
        account=served_by,
        accounts=accounts if accounts is not None else [served_by],
        health=health or {},
        session=session,
        routed=True,
    )
    state.message = protocol.parse_request(flow.request.content or b"", state.route, flow.request.path)
    flow.metadata[METADATA_KEY] = state
    return flow


def state(flow: http.HTTPFlow) -> FlowState:
    found = flow.metadata[METADATA_KEY]
    assert isinstance(found, FlowState)
    return found


def json_answer(
    usage: dict[str, Any] | None = None, status: int = 200, headers: dict[str, str] | None = None
) -> http.Response:
    return http.Response.make(
        status,
        message_json(MODEL, usage if usage is not None else OPUS_EXAMPLE_USAGE),
        {"content-type": "application/json", **(headers or {})},
    )


def error_answer(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> http.Response:
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()
    return http.Response.make(status, body, {"content-type": "application/json", **(headers or {})})


def sse_headers(content_encoding: str = "") -> http.Response:
    """The head of a streamed answer; its body goes through `flow.response.stream` chunk by chunk."""
    headers = {"content-type": "text/event-stream", "transfer-encoding": "chunked"}
    if content_encoding:
        headers["content-encoding"] = content_encoding
    response = http.Response.make(200, b"", headers)
    response.content = None
    return response


async def usage_totals(runtime: Runtime) -> Counter[str]:
    """Every usage metric the team's buckets of today (and yesterday) hold, summed: requests, tokens, cost..."""
    today = dt.datetime.now(runtime.store.zone).date()
    totals: Counter[str] = Counter()
    for cell in await runtime.store.usage_cells(today - dt.timedelta(days=1), today):
        totals[cell.metric] += cell.value
    return totals


async def health_of(runtime: Runtime, served_by: Account) -> AccountHealth:
    return (await runtime.store.account_health([served_by.id]))[served_by.id]
