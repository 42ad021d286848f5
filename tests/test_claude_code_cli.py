"""The real Claude Code CLI (pinned in tests/clients) through the relay, on subscription accounts.

`claude -p` runs as a team member configures it (ANTHROPIC_BASE_URL = the relay, ANTHROPIC_AUTH_TOKEN =
the team key) against a fake upstream scripted for one Bash tool round trip. The pool holds only OAuth
accounts that do NOT allow other clients: Claude Code must be served there, a plain API client refused.
A tap between the CLI and the relay keeps the bytes the CLI sent, to compare with what the upstream got.
Only the `serve` engine: the other engines share the relay code these tests exercise, and the CLI is slow
enough to matter for CI time.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from relay_core.models import Account
from tests.support.admin import Admin
from tests.support.claude_code import FINAL_TEXT
from tests.support.claude_code import RESUME_TEXT
from tests.support.claude_code import SONNET_45
from tests.support.claude_code import TOOL_COMMAND
from tests.support.claude_code import TOOL_MARKER
from tests.support.claude_code import ClaudeCode
from tests.support.claude_code import ClientTap
from tests.support.claude_code import ScriptedApi
from tests.support.claude_code import Sent
from tests.support.claude_code import install_problem
from tests.support.claude_code import list_price
from tests.support.claude_code import pinned_version
from tests.support.claude_code import tool_result_text
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Seen
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.parametrize("relay", ["serve"], indirect=True)

MODEL = "claude-sonnet-4-5-20250929"  # priced alike by Claude Code and genai-prices ($3 / $15)
PROMPT = "Run the marker command and tell me what it printed."
RESUME_PROMPT = "What did the marker command print earlier?"
TOKENS = {"max-1": "sk-ant-oat01-relay-e2e-max-1-" + "a" * 40, "max-2": "sk-ant-oat01-relay-e2e-max-2-" + "b" * 40}
OAUTH_BETA = "oauth-2025-04-20"
IDENTITY_LINES = (  # claude-api §2.2: system block 2 of Claude Code and the Agent SDK
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
)


@pytest.fixture(scope="module")
def claude_installed() -> None:
    problem = install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def api(upstream: FakeUpstream, admin: Admin) -> Iterator[ScriptedApi]:
    scripted = ScriptedApi()
    upstream.handler = scripted
    yield scripted
    upstream.handler = None


@pytest.fixture
def pool(admin: Admin) -> dict[str, Account]:
    """Two subscription accounts, neither allowing other clients: Claude Code only."""
    later = time.time() + 8 * 3600
    return {
        name: admin.add_account(name, token, kind="oauth", expires_at=later, allow_other_clients=False)
        for name, token in TOKENS.items()
    }


@pytest.fixture
def tap(relay: RelayProcess) -> Iterator[ClientTap]:
    between = ClientTap(relay.port).start()
    yield between
    between.stop()


@pytest.fixture
def claude(
    claude_installed: None, tap: ClientTap, admin: Admin, pool: dict[str, Account], tmp_path: Path
) -> ClaudeCode:
    team_key = admin.create_key("team")
    return ClaudeCode(tmp_path / "home", tmp_path / "project", tap.url, team_key, MODEL)


def messages_requests(upstream: FakeUpstream) -> list[Seen]:
    return [s for s in upstream.requests if s.path.split("?")[0] == "/v1/messages"]


def account_of(seen: Seen, pool: dict[str, Account]) -> str:
    by_token = {f"Bearer {TOKENS[name]}": name for name in pool}
    credential = seen.headers.get("authorization", "")
    assert credential in by_token, f"the upstream got {credential[:20]!r}…, not an account's token"
    return by_token[credential]


def check_forwarded(sent: list[Sent], seen: list[Seen], team_key: str, pool: dict[str, Account]) -> None:
    """Each request the CLI sent reached the upstream with the body unchanged, the account's credential
    instead of the team key, and the OAuth beta added to the client's list (kept in its order)."""
    assert [(s.method, s.path) for s in sent] == [(s.method, s.path) for s in seen]
    for client, up in zip(sent, seen, strict=True):
        assert client.headers["authorization"] == f"Bearer {team_key}"
        assert "x-api-key" not in client.headers
        assert up.body == client.body, "the relay changed the request body"
        account_of(up, pool)  # the credential of one of the pool's accounts
        assert "x-api-key" not in up.headers
        assert up.headers.get("accept-encoding") == "identity"
        assert not any(team_key in value for value in up.headers.values()), "the team key reached the upstream"
        client_betas = client.headers.get("anthropic-beta", "").split(",")
        upstream_betas = up.headers["anthropic-beta"].split(",")
        assert OAUTH_BETA not in client_betas  # ANTHROPIC_AUTH_TOKEN never sends it: the relay must add it
        assert upstream_betas[: len(client_betas)] == client_betas
        assert OAUTH_BETA in upstream_betas
        for name in ("user-agent", "x-app", "anthropic-version", "x-claude-code-session-id"):
            assert up.headers.get(name) == client.headers.get(name), name


def check_claude_code_signals(seen: Seen, session_id: str) -> None:
    """What recognises Claude Code (claude-api §7), as the upstream received it."""
    assert seen.path == "/v1/messages?beta=true"
    assert seen.headers["user-agent"].startswith(f"claude-cli/{pinned_version()} (external, ")
    assert seen.headers["x-app"] == "cli"
    assert seen.headers["x-claude-code-session-id"] == session_id
    body = seen.json()
    system = body["system"]
    assert re.fullmatch(
        rf"x-anthropic-billing-header: cc_version={re.escape(pinned_version())}\.[0-9a-f]{{3}}; cc_entrypoint=[a-z-]+;",
        system[0]["text"],
    ), system[0]
    assert "cch=" not in system[0]["text"]  # only sent to api.anthropic.com itself
    assert system[1]["text"] in IDENTITY_LINES, system[1]
    user_id = json.loads(body["metadata"]["user_id"])
    assert re.fullmatch(r"[0-9a-f]{64}", user_id["device_id"])
    assert user_id["account_uuid"] == ""
    assert user_id["session_id"] == session_id
    assert body["model"] == MODEL and body["stream"] is True


def relay_usage(admin: Admin, count: int) -> dict[str, Any]:
    rows = admin.wait_for_requests(count, timeout=10)
    assert [row["key"] for row in rows] == ["team"], rows
    return rows[0]


def set_priority(admin: Admin, account: Account, priority: int) -> None:
    def change(a: Account) -> None:
        a.priority = priority

    admin._run(lambda rt: rt.store.update_account(account.id, change))


def test_tool_round_trip_on_a_subscription(
    claude: ClaudeCode, api: ScriptedApi, tap: ClientTap, upstream: FakeUpstream, admin: Admin, pool
) -> None:
    run = claude.run(PROMPT)
    result = run.result
    assert result["subtype"] == "success" and result["is_error"] is False, run.describe()
    assert result["result"] == FINAL_TEXT
    assert result["num_turns"] == 2
    session_id = result["session_id"]

    # With nonessential traffic off, the turn is exactly the tool call and the answer to its result.
    assert api.kinds() == ["tool_call", "final"], api.kinds()
    seen = messages_requests(upstream)
    assert len(seen) == 2
    assert len(upstream.requests) == 2, [s.path for s in upstream.requests]  # nothing else was forwarded
    sent = tap.requests()
    check_forwarded(sent, seen, claude.token, pool)
    for request in seen:
        check_claude_code_signals(request, session_id)
    assert len({account_of(s, pool) for s in seen}) == 1, "the tool round trip changed accounts"

    # The second request carries the Bash result, and the earlier tool call as Claude Code understood it.
    second = seen[1].json()["messages"]
    tool_use = next(p for p in second[-2]["content"] if p.get("type") == "tool_use")
    assert tool_use["name"] == "Bash" and tool_use["input"]["command"] == TOOL_COMMAND
    (tool_result,) = (p for p in second[-1]["content"] if p.get("type") == "tool_result")
    assert tool_result["tool_use_id"] == tool_use["id"] and tool_result["is_error"] is False
    assert tool_result_text(tool_result).startswith(TOOL_MARKER)

    # The relay's bill for the key equals Claude Code's own, and the list price worked out by hand.
    row = relay_usage(admin, len(seen))
    assert row["requests"] == 2 and row["errors"] == 0 and row["partial"] == 0 and row["unpriced"] == 0
    by_hand = sum((list_price(SONNET_45, a.usage) for a in api.answered), Decimal(0))
    assert result["total_cost_usd"] == pytest.approx(float(by_hand), abs=1e-9)
    assert row["cost_usd"] == pytest.approx(result["total_cost_usd"], abs=1e-9)
    client_usage = result["usage"]
    for field in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert row[field] == client_usage[field], field


def test_resumed_session_reaches_upstream_whole_and_stays_on_its_account(
    claude: ClaudeCode, api: ScriptedApi, tap: ClientTap, upstream: FakeUpstream, admin: Admin, pool
) -> None:
    first = claude.run(PROMPT).result
    session_id = first["session_id"]
    (account,) = {account_of(s, pool) for s in messages_requests(upstream)}
    # Make the other account the scheduler's clear first choice: only the session binding keeps us here.
    (other,) = (a for name, a in pool.items() if name != account)
    set_priority(admin, other, 90)

    run = claude.run(RESUME_PROMPT, "--resume", session_id)
    second = run.result
    assert second["subtype"] == "success" and second["is_error"] is False, run.describe()
    assert second["result"] == RESUME_TEXT
    assert second["session_id"] == session_id

    assert api.kinds() == ["tool_call", "final", "resume"], api.kinds()
    seen = messages_requests(upstream)
    assert len(seen) == 3
    check_forwarded(tap.requests(), seen, claude.token, pool)
    check_claude_code_signals(seen[2], session_id)
    assert [account_of(s, pool) for s in seen] == [account] * 3, "the resumed session moved to another account"
    key = admin._run(lambda rt: rt.store.find_key("team"))
    assert key is not None
    assert admin._run(lambda rt: rt.store.sticky_account(key.id, session_id)) == pool[account].id

    # The resumed request carries the whole earlier conversation, then the new prompt.
    messages = seen[2].json()["messages"]
    flat = json.dumps(messages)
    assert PROMPT in flat and TOOL_COMMAND in flat and FINAL_TEXT in flat
    tool_uses = [p for m in messages if m["role"] == "assistant" for p in m["content"] if p.get("type") == "tool_use"]
    results = [p for m in messages if m["role"] == "user" for p in m["content"] if p.get("type") == "tool_result"]
    assert [t["input"]["command"] for t in tool_uses] == [TOOL_COMMAND]
    assert [r["tool_use_id"] for r in results] == [tool_uses[0]["id"]]
    last = messages[-1]
    assert last["role"] == "user" and RESUME_PROMPT in json.dumps(last["content"])

    # A resumed `claude -p` restores the session's cost so far: its total covers all three requests, as
    # does the relay's bill for the key.
    row = relay_usage(admin, 3)
    assert row["requests"] == 3 and row["errors"] == 0
    resumed = list_price(SONNET_45, api.answered[2].usage)
    assert second["total_cost_usd"] == pytest.approx(first["total_cost_usd"] + float(resumed), abs=1e-9)
    assert row["cost_usd"] == pytest.approx(second["total_cost_usd"], abs=1e-9)


def test_the_same_pool_refuses_a_plain_api_client(
    relay: RelayProcess, api: ScriptedApi, upstream: FakeUpstream, admin: Admin, pool
) -> None:
    """The contrast that makes the tests above meaningful: these accounts serve Claude Code only."""
    team_key = admin.create_key("team")
    body = json.dumps({"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        f"{relay.url}/v1/messages",
        data=body,
        headers={
            "authorization": f"Bearer {team_key}",
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "user-agent": "Anthropic/Python 0.70.0",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    error = json.loads(refused.value.read())
    assert error["error"]["type"] == "permission_error"
    assert refused.value.headers.get("x-should-retry") == "false"
    assert upstream.requests == []
