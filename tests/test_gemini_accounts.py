"""Adding Gemini accounts with `relay accounts add-gemini`: an API key, Gemini CLI's credentials file, and a
Google sign-in (Gemini CLI's no-browser flow) against a fake Google on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from relay_core.google_oauth import GEMINI_CLI_CLIENT_ID
from tests.support.admin import Admin
from tests.support.fake_google import FakeGoogle
from tests.support.fake_google import quota_exhausted

ACCESS, REFRESH, PROJECT = "ya29.signed-in-access", "1//signed-in-refresh", "proj-signed-in"


@pytest.fixture
def google(google_server: FakeGoogle, cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> FakeGoogle:
    google_server.reset()
    monkeypatch.setenv("RELAY_GEMINI__CODE_ASSIST_URL", google_server.url)
    monkeypatch.setenv("RELAY_GEMINI__API_URL", google_server.url)
    monkeypatch.setenv("RELAY_GEMINI__TOKEN_URL", google_server.url + "/token")
    return google_server


def test_a_google_sign_in_pastes_the_code_and_finds_the_project(
    google: FakeGoogle, admin: Admin, cli: Callable[..., str]
) -> None:
    google.auth_codes["4/0-the-code-google-showed"] = (ACCESS, REFRESH)
    google.tokens[ACCESS] = PROJECT

    result = CliRunner().invoke(
        main,
        ["accounts", "add-gemini", "google-signed", "--oauth", "--format", "json"],
        input="4/0-the-code-google-showed\n",
    )

    assert result.exit_code == 0, result.output
    url = next(line for line in result.output.splitlines() if line.startswith("https://"))
    query = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert query["client_id"] == GEMINI_CLI_CLIENT_ID and query["access_type"] == "offline"
    assert query["redirect_uri"] == "https://codeassist.google.com/authcode"
    assert "cloud-platform" in query["scope"] and query["code_challenge_method"] == "S256"
    view = json.loads(result.output[result.output.index("{") :])
    assert view["kind"] == "gemini-oauth" and view["refreshable"] is True
    assert google.calls() == ["POST /token", "POST /v1internal:loadCodeAssist"]
    form = {k: v[0] for k, v in urllib.parse.parse_qs(google.requests[0].body.decode()).items()}
    assert form["grant_type"] == "authorization_code" and form["code"] == "4/0-the-code-google-showed"
    verifier_hash = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(verifier_hash).rstrip(b"=").decode() == query["code_challenge"]
    assert google.requests[1].headers["authorization"] == f"Bearer {ACCESS}"
    (account,) = [a for a in admin.list_accounts() if a.name == "google-signed"]
    assert account.project == PROJECT
    shown = cli("accounts", "show", "google-signed")
    assert ACCESS not in shown and REFRESH not in shown and ACCESS not in result.output


def test_a_wrong_code_adds_nothing_and_says_why(google: FakeGoogle, admin: Admin) -> None:
    result = CliRunner().invoke(main, ["accounts", "add-gemini", "google-wrong", "--oauth"], input="4/0-unknown\n")
    assert result.exit_code != 0
    assert "sign-in failed" in result.output and "invalid_grant" in result.output
    assert all(a.name != "google-wrong" for a in admin.list_accounts())


def test_a_credentials_file_with_an_expired_token_is_refreshed_before_the_project_is_found(
    google: FakeGoogle, admin: Admin, cli: Callable[..., str], tmp_path: Path
) -> None:
    google.refresh_tokens["1//from-the-file"] = "ya29.fresh"
    google.tokens["ya29.fresh"] = PROJECT
    creds = tmp_path / "oauth_creds.json"
    expired = {"access_token": "ya29.stale", "refresh_token": "1//from-the-file", "expiry_date": 1000}
    creds.write_text(json.dumps(expired))

    cli("accounts", "add-gemini", "google-file", "--credentials-file", str(creds))

    assert google.calls() == ["POST /token", "POST /v1internal:loadCodeAssist"]
    (account,) = [a for a in admin.list_accounts() if a.name == "google-file"]
    assert account.project == PROJECT and account.expires_at is not None and account.expires_at > time.time()


def test_an_api_key_account_and_bad_combinations(google: FakeGoogle, admin: Admin, cli: Callable[..., str]) -> None:
    out = json.loads(cli("accounts", "add-gemini", "gemini-key", "--api-key", "AIzaSyExample", "--format", "json"))
    assert out["kind"] == "gemini-api-key" and "AIzaSyExample" not in json.dumps(out)
    both = CliRunner().invoke(main, ["accounts", "add-gemini", "x", "--api-key", "k", "--oauth"])
    assert both.exit_code == 2 and "one of --api-key" in both.output
    broken = CliRunner().invoke(main, ["accounts", "add-gemini", "y", "--credentials-file", "-"], input="{}")
    assert broken.exit_code == 2 and "no access_token" in broken.output


def test_accounts_test_sends_one_tiny_request_on_each_kind_of_gemini_account(
    google: FakeGoogle, admin: Admin, cli: Callable[..., str], tmp_path: Path
) -> None:
    google.api_keys.add("AIzaSyProbeKey")
    google.tokens["ya29.probe"] = PROJECT
    cli("accounts", "add-gemini", "gemini-key", "--api-key", "AIzaSyProbeKey")
    creds = tmp_path / "oauth_creds.json"
    creds.write_text(json.dumps({"access_token": "ya29.probe", "expiry_date": (time.time() + 3600) * 1000}))
    cli("accounts", "add-gemini", "google-probe", "--credentials-file", str(creds))
    google.requests.clear()

    for name in ("gemini-key", "google-probe"):
        result = json.loads(cli("accounts", "test", name, "--format", "json"))
        assert result["status"] == 200 and result["error"] is None, result
    key_call, assist_call = google.requests
    assert key_call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert key_call.headers["x-goog-api-key"] == "AIzaSyProbeKey"
    assert assist_call.path == "/v1internal:generateContent" and assist_call.json()["project"] == PROJECT

    google.handler = lambda seen: quota_exhausted("gemini-2.5-flash", 600)
    limited = json.loads(cli("accounts", "test", "google-probe", "--format", "json", ok=False))  # exits 1
    assert limited["status"] == 429 and "exhausted" in limited["error"]
    listed = {a["name"]: a for a in json.loads(cli("accounts", "list", "--format", "json"))}
    assert listed["google-probe"]["limited_families"] == "gemini-2.5-flash"
