"""Shared pieces of the in-process addon tests (tests/test_addon_*.py): a real Runtime on a store prefix of its
own, and mitmproxy test flows shaped like the requests Claude Code sends."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow
from mitmproxy.test import tutils

from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols import classify
from relay_core.runtime import Runtime
from relay_core.settings import Settings

MODEL = "claude-sonnet-4-5"
CLAUDE_CODE_HEADERS = {"user-agent": "claude-cli/2.1.332 (external, cli)", "x-app": "cli"}
CLAUDE_CODE_SYSTEM = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."}]
# The base-URL listener's mode (cli/serve.py); mitmproxy's test flows default to a forward proxy's ("regular"),
# whose flows the ForwardProxy addon refuses unless they came through an intercepted tunnel.
BASE_URL_MODE = ProxyMode.parse("reverse:http://127.0.0.1:9@127.0.0.1:0")


@contextlib.asynccontextmanager
async def own_runtime(settings: Settings, **overrides: Any) -> AsyncIterator[Runtime]:
    """A Runtime on the session's Valkey under a key prefix no other test uses; its keys are deleted after.
    `overrides` replace settings without validation (the tests' sub-second timeouts are below the minimum)."""
    prefix = f"addon-{secrets.token_hex(6)}"
    runtime = Runtime(settings.model_copy(update={"key_prefix": prefix, **overrides}))
    try:
        if "redis_url" not in overrides:
            await runtime.check_secret()
        yield runtime
    finally:
        if "redis_url" not in overrides:
            with contextlib.suppress(Exception):
                redis = runtime.store.redis
                stale = [name async for name in redis.scan_iter(match="{" + prefix + "}*")]
                if stale:
                    await redis.delete(*stale)
        await runtime.close()


def unreachable_store_url() -> str:
    """A loopback address nothing listens on: every store call fails at once (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def add_key(runtime: Runtime, name: str = "alice", **changes: Any) -> str:
    """A team key (limits as `relay keys create` takes them); returns its secret."""
    return (await AdminService(runtime).keys.create(name, KeyChanges(**changes))).secret


async def add_account(runtime: Runtime, name: str, secret: str, kind: str = "console", **fields: Any) -> Account:
    return await AdminService(runtime).accounts.add(name, AccountKind(kind), secret, **fields)


def request_flow(
    method: str = "POST",
    path: str = "/v1/messages",
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
) -> http.HTTPFlow:
    """A live flow as mitmproxy hands it to the relay's request hooks (the reverse-proxy target as its host)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    fields = {**(headers or {})}
    if content_length:
        fields.setdefault("content-length", str(len(raw)))
    request = tutils.treq(
        host="relay.invalid",
        port=9,
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers([(name.encode(), value.encode()) for name, value in fields.items()]),
        content=raw,
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.timestamp_end = None  # the client is still connected
    flow.client_conn.proxy_mode = BASE_URL_MODE
    return flow


def classified(flow: http.HTTPFlow) -> http.HTTPFlow:
    """The state ServiceEndpoints (first in the chain) leaves on every flow it lets through."""
    protocol, route = classify(flow.request.method, flow.request.path)
    flow.metadata[METADATA_KEY] = FlowState(route=route, protocol=protocol)
    return flow


def state(flow: http.HTTPFlow) -> FlowState:
    found = flow.metadata[METADATA_KEY]
    assert isinstance(found, FlowState)
    return found


def messages_body(text: str = "hello", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A Messages request whose last turn is a person's (a human turn)."""
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def tool_result_body(model: str = MODEL) -> dict[str, Any]:
    """A Messages request handing a tool's result back: not a human turn."""
    content = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": content}]}


def refusal(flow: http.HTTPFlow) -> tuple[int, str, str]:
    """The status, `error.type` and message of the relay's own answer, checking its Anthropic envelope."""
    assert flow.response is not None, "the relay did not answer"
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error"
    assert body["request_id"] == flow.response.headers["request-id"]
    return flow.response.status_code, body["error"]["type"], body["error"]["message"]
