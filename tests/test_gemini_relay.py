"""The real Gemini CLI through the relay, in both of its auth methods, against a fake Google on loopback.

The CLI is configured as a team member would (README: Gemini CLI): its base URL is the relay's `/gemini`
and its credential the team key. The fake Google knows only the accounts' credentials, so a turn that
completes shows the relay swapped them in; the fake's record shows the team key never reached it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from relay_core.google_oauth import GEMINI_CLI_CLIENT_ID
from relay_core.pricing import price_usd
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_google import DEFAULT_USAGE
from tests.support.fake_google import FakeGoogle
from tests.support.fake_google import quota_exhausted
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.gemini_cli import Method
from tests.support.gemini_cli import run_gemini
from tests.support.relay_process import RelayProcess

MODEL = "gemini-2.5-pro"
API_KEY = "AIzaSyRelayAccountKey000000000000000000"
TOKEN_A, TOKEN_B = "ya29.relay-account-A-token", "ya29.relay-account-B-token"
PROJECT_A, PROJECT_B = "proj-account-a", "proj-account-b"


@pytest.fixture
def google(google_server: FakeGoogle) -> FakeGoogle:
    google_server.reset()
    google_server.api_keys.add(API_KEY)
    google_server.tokens.update({TOKEN_A: PROJECT_A, TOKEN_B: PROJECT_B})
    return google_server


def gemini_env(google: FakeGoogle) -> dict[str, str]:
    return {
        "RELAY_GEMINI__API_URL": google.url,
        "RELAY_GEMINI__CODE_ASSIST_URL": google.url,
        "RELAY_GEMINI__TOKEN_URL": google.url + "/token",
    }


@pytest.fixture
def relay(start_relay: Callable[..., RelayProcess], google: FakeGoogle) -> RelayProcess:
    return start_relay("serve", **gemini_env(google))


@pytest.fixture
def gemini_cli(cli: Callable[..., str], google: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`relay ...` in-process, with the Google URLs of the fake."""
    for name, value in gemini_env(google).items():
        monkeypatch.setenv(name, value)
    return cli


def add_google_account(cli: Callable[..., str], tmp_path: Path, name: str, token: str) -> dict[str, Any]:
    """Import Gemini CLI's credentials file, as an admin does; the project is found through Code Assist."""
    creds = tmp_path / f"{name}-oauth_creds.json"
    creds.write_text(
        json.dumps(
            {
                "access_token": token,
                "refresh_token": f"1//refresh-{name}",
                "expiry_date": int((time.time() + 3600) * 1000),
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
            }
        )
    )
    return json.loads(cli("accounts", "add-gemini", name, "--credentials-file", str(creds), "--format", "json"))


def turn(relay: RelayProcess, method: Method, team_key: str, **options: Any) -> Any:
    return run_gemini("hi", method=method, base_url=relay.url + "/gemini", credential=team_key, **options)


def assert_team_key_never_upstream(google: FakeGoogle, team_key: str) -> None:
    for seen in google.requests:
        assert team_key not in seen.path
        assert all(team_key not in value for value in seen.headers.values())
        assert team_key.encode() not in seen.body


def expected_usage() -> TokenUsage:
    prompt, cached = DEFAULT_USAGE["promptTokenCount"], DEFAULT_USAGE["cachedContentTokenCount"]
    thoughts = DEFAULT_USAGE["thoughtsTokenCount"]
    return TokenUsage(
        input_tokens=prompt - cached,
        cache_read_input_tokens=cached,
        output_tokens=DEFAULT_USAGE["candidatesTokenCount"] + thoughts,
        thinking_tokens=thoughts,
    )


@pytest.mark.e2e
def test_api_key_method_turn_is_served_counted_and_priced(
    gemini_installed: None, relay: RelayProcess, admin: Admin, google: FakeGoogle, gemini_cli: Callable[..., str]
) -> None:
    team_key = admin.create_key("gemini-team")
    gemini_cli("accounts", "add-gemini", "gemini-key", "--api-key", API_KEY)

    done = turn(relay, "api-key", team_key)

    assert done.returncode == 0, done.describe() + relay.log()[-3000:]
    assert done.stdout.strip() == google.text
    assert google.calls() == [f"POST /v1beta/models/{MODEL}:streamGenerateContent"]
    (seen,) = google.requests
    assert seen.headers["x-goog-api-key"] == API_KEY and "authorization" not in seen.headers
    assert_team_key_never_upstream(google, team_key)

    (row,) = admin.wait_for_requests(1)
    usage = expected_usage()
    assert row["key"] == "gemini-team" and row["requests"] == 1 and row["errors"] == 0 and row["quota"] == 0
    assert row["input_tokens"] == usage.input_tokens == 234
    assert row["cache_read_input_tokens"] == usage.cache_read_input_tokens == 1000
    assert row["output_tokens"] == usage.output_tokens == 134 and row["thinking_tokens"] == 78
    cost = price_usd(MODEL, usage, {})
    assert cost is not None and cost > 0
    assert Decimal(str(row["cost_usd"])) == cost.quantize(Decimal("0.000000001"))
    table = gemini_cli("usage", "--by", "key")
    assert "thinking" in table and "gemini-team" in table


@pytest.mark.e2e
def test_code_assist_method_turn_runs_on_the_accounts_token_and_project(
    gemini_installed: None,
    relay: RelayProcess,
    admin: Admin,
    google: FakeGoogle,
    gemini_cli: Callable[..., str],
    tmp_path: Path,
) -> None:
    team_key = admin.create_key("gemini-team")
    account = add_google_account(gemini_cli, tmp_path, "google-a", TOKEN_A)
    assert account["kind"] == "gemini-oauth"
    google.requests.clear()  # the project discovery at import time

    done = turn(relay, "code-assist", team_key)

    assert done.returncode == 0, done.describe() + relay.log()[-3000:]
    assert done.stdout.strip() == google.text
    # The set-up calls are the relay's to answer; only the turn itself goes to Google.
    assert google.calls() == ["POST /v1internal:streamGenerateContent"]
    (seen,) = google.requests
    assert seen.headers["authorization"] == f"Bearer {TOKEN_A}"
    assert seen.json()["project"] == PROJECT_A  # the account's project, not the placeholder the CLI was told
    assert_team_key_never_upstream(google, team_key)
    (row,) = admin.wait_for_requests(1)
    assert row["output_tokens"] == 134 and row["thinking_tokens"] == 78
    assert row["quota"] == 1 and row["cost_usd"] > 0  # the API's price, marked as drawn from the account's quota
    assert "1 on quota, not billed" in gemini_cli("usage", "--by", "key")


@pytest.mark.e2e
def test_a_quota_429_on_one_google_account_is_served_by_the_next(
    gemini_installed: None,
    relay: RelayProcess,
    admin: Admin,
    google: FakeGoogle,
    gemini_cli: Callable[..., str],
    tmp_path: Path,
) -> None:
    team_key = admin.create_key("gemini-team")
    add_google_account(gemini_cli, tmp_path, "google-a", TOKEN_A)
    add_google_account(gemini_cli, tmp_path, "google-b", TOKEN_B)
    admin.update_account("google-a", lambda a: setattr(a, "priority", 90))  # A is tried first
    google.requests.clear()
    reset_s = 2 * 3600

    def reply(seen: Seen) -> Reply:
        if seen.headers.get("authorization") == f"Bearer {TOKEN_A}":
            return quota_exhausted(MODEL, reset_s)
        return google.default_reply(seen)

    google.handler = reply
    started = time.time()
    done = turn(relay, "code-assist", team_key)

    assert done.returncode == 0, done.describe() + relay.log()[-3000:]
    assert done.stdout.strip() == google.text
    tokens = [s.headers["authorization"].removeprefix("Bearer ") for s in google.requests]
    assert tokens == [TOKEN_A, TOKEN_B]  # the same turn, sent again on the next account
    assert [s.json()["project"] for s in google.requests] == [PROJECT_A, PROJECT_B]
    assert google.requests[0].body.replace(PROJECT_A.encode(), b"") == google.requests[1].body.replace(
        PROJECT_B.encode(), b""
    )
    listed = {a["name"]: a for a in json.loads(gemini_cli("accounts", "list", "--format", "json"))}
    limited = listed["google-a"]
    assert limited["limited_families"] == MODEL and listed["google-b"]["limited_until"] is None, listed
    until = dt.datetime.fromisoformat(limited["limited_until"]).timestamp()
    assert abs(until - (started + reset_s)) < 60, limited


def call(relay: RelayProcess, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{relay.url}{path}", data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def gemini_request(relay: RelayProcess, team_key: str, model: str = MODEL) -> tuple[int, dict[str, Any]]:
    """A plain Gemini API call as the SDK sends it (key in x-goog-api-key)."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    return call(relay, "POST", f"/gemini/v1beta/models/{model}:generateContent", {"x-goog-api-key": team_key}, body)


@pytest.mark.e2e
def test_budgets_model_rules_and_disabled_keys_refuse_in_googles_shape(
    relay: RelayProcess, admin: Admin, google: FakeGoogle, gemini_cli: Callable[..., str]
) -> None:
    team_key = admin.create_key("gemini-team")
    gemini_cli("accounts", "add-gemini", "gemini-key", "--api-key", API_KEY)
    assert gemini_request(relay, team_key)[0] == 200

    ruled_key = admin.create_key("gemini-ruled")
    gemini_cli("keys", "update", "gemini-ruled", "--deny-models", "gemini-2.5-*")
    status, body = gemini_request(relay, ruled_key)
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED", body
    assert "gemini-2.5-pro" in body["error"]["message"]
    assert gemini_request(relay, ruled_key, "gemini-2.0-flash")[0] == 200

    budget_key = admin.create_key("gemini-budget")
    gemini_cli("keys", "update", "gemini-budget", "--daily-budget", "0.000001")
    assert gemini_request(relay, budget_key)[0] == 200  # nothing spent yet: served, and its cost spends it all
    admin.wait_for_requests(3)
    status, body = gemini_request(relay, budget_key)
    assert status in (402, 429) and body["error"]["code"] == status, body
    assert "budget" in body["error"]["message"]

    admin.set_key_enabled("gemini-team", False)
    status, body = gemini_request(relay, team_key)
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED", body
    status, body = gemini_request(relay, "not-a-team-key")
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED", body
    assert len([s for s in google.requests if ":generateContent" in s.path]) == 3


@pytest.mark.e2e
def test_an_expired_google_token_is_refreshed_with_the_gemini_cli_client_before_the_turn(
    relay: RelayProcess, admin: Admin, google: FakeGoogle, gemini_cli: Callable[..., str], tmp_path: Path
) -> None:
    team_key = admin.create_key("gemini-team")
    add_google_account(gemini_cli, tmp_path, "google-a", TOKEN_A)
    admin.update_account("google-a", lambda a: setattr(a, "expires_at", time.time() - 60))
    google.refresh_tokens["1//refresh-google-a"] = "ya29.refreshed-token"
    google.tokens["ya29.refreshed-token"] = PROJECT_A
    google.requests.clear()
    body = {
        "model": MODEL,
        "project": "claude-relay",
        "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    }
    request = urllib.request.Request(
        f"{relay.url}/gemini/v1internal:generateContent",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {team_key}"},
    )
    with urllib.request.urlopen(request, timeout=20) as answer:
        assert answer.status == 200
        assert json.loads(answer.read())["response"]["candidates"][0]["content"]["parts"]

    assert google.calls() == ["POST /token", "POST /v1internal:generateContent"]
    form = urllib.parse.parse_qs(google.requests[0].body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["1//refresh-google-a"]
    assert form["client_id"] == [GEMINI_CLI_CLIENT_ID]
    assert google.requests[1].headers["authorization"] == "Bearer ya29.refreshed-token"
    assert google.requests[1].json()["project"] == PROJECT_A


@pytest.mark.e2e
def test_the_gemini_api_paths_an_sdk_uses_with_the_key_in_any_place(
    relay: RelayProcess, admin: Admin, google: FakeGoogle, gemini_cli: Callable[..., str]
) -> None:
    team_key = admin.create_key("gemini-team")
    gemini_cli("accounts", "add-gemini", "gemini-key", "--api-key", API_KEY)
    contents = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

    status, listed = call(relay, "GET", "/gemini/v1beta/models", {"x-goog-api-key": team_key})
    assert status == 200 and MODEL in json.dumps(listed)
    status, counted = call(
        relay, "POST", f"/gemini/v1beta/models/{MODEL}:countTokens", {"x-goog-api-key": team_key}, contents
    )
    assert status == 200 and counted["totalTokens"] == DEFAULT_USAGE["promptTokenCount"]
    status, answer = call(relay, "POST", f"/gemini/v1beta/models/{MODEL}:generateContent?key={team_key}", {}, contents)
    assert status == 200 and answer["usageMetadata"]["candidatesTokenCount"] == DEFAULT_USAGE["candidatesTokenCount"]

    assert [s.path.split("?")[0] for s in google.requests] == [
        "/v1beta/models",
        f"/v1beta/models/{MODEL}:countTokens",
        f"/v1beta/models/{MODEL}:generateContent",
    ]
    assert all(s.headers["x-goog-api-key"] == API_KEY for s in google.requests)
    assert_team_key_never_upstream(google, team_key)
    (row,) = admin.wait_for_requests(1)
    assert row["requests"] == 1 and row["output_tokens"] == 134  # only generate calls are metered, as for Claude


@pytest.mark.e2e
def test_a_code_assist_session_stays_on_one_google_account(
    relay: RelayProcess, admin: Admin, google: FakeGoogle, gemini_cli: Callable[..., str], tmp_path: Path
) -> None:
    team_key = admin.create_key("gemini-team")
    add_google_account(gemini_cli, tmp_path, "google-a", TOKEN_A)
    add_google_account(gemini_cli, tmp_path, "google-b", TOKEN_B)
    google.requests.clear()

    def turn_of(session: str) -> None:
        body = {"model": MODEL, "project": "claude-relay", "request": {"session_id": session, "contents": []}}
        status, _ = call(
            relay, "POST", "/gemini/v1internal:generateContent", {"authorization": f"Bearer {team_key}"}, body
        )
        assert status == 200

    for session in ("session-one", "session-two"):
        for _ in range(8):
            turn_of(session)
    used = {}
    for seen in google.requests:
        used.setdefault(seen.json()["request"]["session_id"], set()).add(seen.headers["authorization"])
    assert all(len(tokens) == 1 for tokens in used.values()), used  # 8 turns each, one account each


@pytest.mark.e2e
def test_when_every_google_account_is_out_of_quota_the_cli_stops_at_once_instead_of_sleeping_hours(
    gemini_installed: None,
    relay: RelayProcess,
    admin: Admin,
    google: FakeGoogle,
    gemini_cli: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Google's own answer ("exhausted your capacity", RetryInfo of hours) would make the CLI sleep out the
    delay in silence; the relay answers instead that no account can serve, as a final quota error."""
    team_key = admin.create_key("gemini-team")
    add_google_account(gemini_cli, tmp_path, "google-a", TOKEN_A)
    google.requests.clear()
    google.handler = lambda seen: quota_exhausted(MODEL, 3 * 3600)

    done = turn(relay, "code-assist", team_key, timeout=60)

    assert done.returncode != 0 and done.seconds < 30, done.describe()
    assert "cooling down" in done.stdout + done.stderr, done.describe()
    assert google.calls() == ["POST /v1internal:streamGenerateContent"]  # one try: the account then rests
    status, body = call(
        relay,
        "POST",
        "/gemini/v1internal:generateContent",
        {"authorization": f"Bearer {team_key}"},
        {"model": MODEL, "request": {"contents": []}},
    )
    assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "QUOTA_EXHAUSTED" in {d.get("reason") for d in body["error"]["details"]}
    assert "exhausted your capacity" not in json.dumps(body)
    assert len(google.requests) == 1  # the resting account is not asked again
