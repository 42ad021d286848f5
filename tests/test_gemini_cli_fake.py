"""The real Gemini CLI (pinned in tests/clients) straight against FakeGoogle, no relay in between.

These prove the fake is faithful enough for the relay's Gemini tests to mean something: the real client
completes a turn in both auth methods, sends what the 0.61.0 capture recorded (in that order), reports the
token counts the fake sent, and reacts to the fake's quota and credential errors the way the reference
(gemini-cli.md §6) says it reacts to Google's.
"""

from __future__ import annotations

import itertools
import json
import random
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.support.fake_google import FakeGoogle
from tests.support.fake_google import api_quota_exceeded
from tests.support.fake_google import quota_exhausted
from tests.support.fake_google import usage_metadata
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.gemini_cli import Method
from tests.support.gemini_cli import pinned_version
from tests.support.gemini_cli import run_gemini

MODEL = "gemini-2.5-pro"
TOKEN, PROJECT = "ya29.fake-access-token-A", "proj-a-4711"
API_KEY = "AIzaSyFakeKeyForTheGeminiApi00000000"
CREDENTIAL: dict[Method, str] = {"code-assist": TOKEN, "api-key": API_KEY}
STREAM = {
    "code-assist": "POST /v1internal:streamGenerateContent",
    "api-key": f"POST /v1beta/models/{MODEL}:streamGenerateContent",
}
# The startup of a Code Assist turn as captures/gemini-cli-0.61.0-both-methods.json recorded it (its
# /gemini prefix was the relay's route); a Gemini API turn with GEMINI_MODEL set is the stream call alone.
CAPTURED_CODE_ASSIST = [
    "POST /v1internal:loadCodeAssist",
    "POST /v1internal:retrieveUserQuota",
    "POST /v1internal:listExperiments",
    "POST /v1internal:retrieveUserQuota",
    STREAM["code-assist"],
]
USERINFO = "CONNECT www.googleapis.com:443"  # Code Assist's userinfo call at start (reference §1), refused


@pytest.fixture
def google(google_server: FakeGoogle) -> FakeGoogle:
    """The shared fake, clean, knowing one access token (of PROJECT) and one API key."""
    google_server.reset()
    google_server.tokens[TOKEN] = PROJECT
    google_server.api_keys.add(API_KEY)
    google_server.text = f"The fake Google answers, reply {random.randrange(10**6):06d}."
    return google_server


def run(google: FakeGoogle, method: Method, **options: Any) -> Any:
    return run_gemini("hi", method=method, base_url=google.url, credential=CREDENTIAL[method], **options)


def only(google: FakeGoogle, call: str) -> list[Seen]:
    return [s for s in google.requests if f"{s.method} {s.path.split('?')[0]}" == call]


@pytest.mark.e2e
def test_code_assist_turn(gemini_installed: None, google: FakeGoogle) -> None:
    done = run(google, "code-assist")

    assert done.returncode == 0, done.describe()
    assert done.stdout.strip() == google.text
    assert google.calls() == CAPTURED_CODE_ASSIST
    for seen in google.requests:
        assert seen.headers["authorization"] == f"Bearer {TOKEN}"
        assert seen.headers["user-agent"].startswith(f"GeminiCLI-tui/{pinned_version()}/{MODEL} (")
        assert seen.headers["user-agent"].endswith(" google-api-nodejs-client/10.9.0")
        assert seen.headers["x-goog-api-client"].startswith("gl-node/")
    load = google.requests[0].json()
    assert load["metadata"] == {
        "ideType": "IDE_UNSPECIFIED",
        "platform": "PLATFORM_UNSPECIFIED",
        "pluginType": "GEMINI",
    }
    # The project the fake gave for the token comes back in every later call: the CLI took our answer.
    assert [s.json()["project"] for s in google.requests[1:]] == [PROJECT] * 4
    (stream,) = only(google, STREAM["code-assist"])
    assert urllib.parse.parse_qs(stream.path.partition("?")[2]) == {"alt": ["sse"]}
    body = stream.json()
    assert body["model"] == MODEL
    assert body["user_prompt_id"] == body["request"]["session_id"]
    assert body["request"]["contents"][-1]["parts"][-1] == {"text": "hi"}
    assert body["request"]["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 8192}
    # Nothing reached the internet; the one call meant for it (userinfo, with the token) was refused locally.
    assert done.outside == [USERINFO]


@pytest.mark.e2e
def test_api_key_turn(gemini_installed: None, google: FakeGoogle) -> None:
    done = run(google, "api-key")

    assert done.returncode == 0, done.describe()
    assert done.stdout.strip() == google.text
    assert google.calls() == [STREAM["api-key"]]
    (seen,) = google.requests
    assert urllib.parse.parse_qs(seen.path.partition("?")[2]) == {"alt": ["sse"]}  # never ?key=
    assert seen.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in seen.headers
    assert "x-gemini-api-privileged-user-id" not in seen.headers  # usage statistics are off
    assert seen.headers["user-agent"] == f"GeminiCLI-tui/{pinned_version()}/{MODEL} (linux; x64; terminal)"
    assert seen.headers["x-goog-api-client"].startswith("google-genai-sdk/")
    body = seen.json()
    assert "project" not in body and "request" not in body and "model" not in body  # the plain request
    assert body["contents"][-1]["parts"][-1] == {"text": "hi"}
    assert done.outside == []


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["code-assist", "api-key"])
def test_json_output_reports_the_fakes_token_counts(gemini_installed: None, google: FakeGoogle, method: Method) -> None:
    """Middle chunks carry only promptTokenCount and a running total: the CLI must keep the last usage
    whole, neither summing chunks nor mixing them, to report exactly these."""
    cached = random.randrange(100, 900)
    prompt, candidates, thoughts = cached + random.randrange(1, 500), random.randrange(2, 300), random.randrange(1, 99)
    google.usage = usage_metadata(prompt, candidates, thoughts=thoughts, cached=cached)

    done = run(google, method, json_output=True)

    assert done.returncode == 0, done.describe()
    answer = done.json()
    assert answer["response"] == google.text
    (stats,) = answer["stats"]["models"].values()
    assert list(answer["stats"]["models"]) == [MODEL]
    assert stats["api"]["totalRequests"] == 1 and stats["api"]["totalErrors"] == 0
    assert stats["tokens"] == {
        "prompt": prompt,
        "cached": cached,
        "input": prompt - cached,  # the CLI's own arithmetic (reference §5)
        "candidates": candidates,
        "thoughts": thoughts,
        "total": prompt + candidates + thoughts,
        "tool": 0,
    }
    assert len(only(google, STREAM[method])) == 1


def quota_on_stream(google: FakeGoogle, reply: Reply) -> None:
    """Every generate call gets `reply`; the startup calls are answered as usual."""

    def handler(seen: Seen) -> Reply:
        return reply if "GenerateContent" in seen.path else google.default_reply(seen)

    google.handler = handler


@pytest.mark.e2e
def test_code_assist_quota_exhausted_ends_the_run(gemini_installed: None, google: FakeGoogle) -> None:
    """ "exhausted your capacity" is capacity trouble to the CLI: two silent retries, each after RetryInfo's
    delay, then headless with an explicit model it gives up. With a 1 s reset that is a few seconds."""
    reset_s = 1
    quota_on_stream(google, quota_exhausted(MODEL, reset_s))

    done = run(google, "code-assist", timeout=40)

    assert done.returncode == 1, done.describe()
    assert "TerminalQuotaError: You have exhausted your capacity on this model." in done.stderr
    assert "Your quota will reset after 1s." in done.stderr
    streams = only(google, STREAM["code-assist"])
    assert len(streams) == 3, google.calls()
    assert [sent.status for sent in google.sent if sent.seen in streams] == [429] * 3
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(streams)]
    assert all(reset_s * 0.95 <= gap < reset_s * 1.2 + 1 for gap in gaps), gaps  # RetryInfo + up to 20 % jitter
    assert done.seconds < 25, done.describe()


@pytest.mark.e2e
def test_api_key_daily_quota_ends_the_run_at_once(gemini_installed: None, google: FakeGoogle) -> None:
    """A PerDay quotaId is final to the CLI, whatever RetryInfo says: one request, exit 1."""
    quota_on_stream(google, api_quota_exceeded(MODEL, 30, daily=True))

    done = run(google, "api-key", timeout=40)

    assert done.returncode == 1, done.describe()
    assert "TerminalQuotaError: You have exhausted your daily quota on this model." in done.stderr
    assert google.calls() == [STREAM["api-key"]]
    assert done.seconds < 25, done.describe()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "calls", "status", "google_status"),
    [
        # a 401 during setup is tried twice, then the run ends (reference §4)
        ("code-assist", ["POST /v1internal:loadCodeAssist"] * 2, 401, "UNAUTHENTICATED"),
        ("api-key", [STREAM["api-key"]], 400, "INVALID_ARGUMENT"),  # API_KEY_INVALID is not retried
    ],
)
def test_unknown_credentials_are_refused(
    gemini_installed: None, google: FakeGoogle, method: Method, calls: list[str], status: int, google_status: str
) -> None:
    google.tokens.clear()
    google.api_keys.clear()

    done = run(google, method, timeout=40)

    assert done.returncode == 1, done.describe()
    assert google.calls() == calls
    assert {sent.status for sent in google.sent} == {status}
    assert {json.loads(sent.body)["error"]["status"] for sent in google.sent} == {google_status}
    assert google.text not in done.stdout


def post_form(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    request.add_header("content-type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_token_endpoint_refreshes_registered_refresh_tokens_only(google: FakeGoogle) -> None:
    """What a relay keeping Code Assist accounts fresh talks to: the refreshed token then works upstream."""
    google.refresh_tokens["1//refresh-B"] = "ya29.fresh-B"
    form = {"grant_type": "refresh_token", "client_id": "cid", "client_secret": "secret"}

    status, answer = post_form(f"{google.url}/token", form | {"refresh_token": "1//refresh-B"})
    assert status == 200, answer
    assert answer["access_token"] == "ya29.fresh-B" and answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3599 and "cloud-platform" in answer["scope"]
    assert "ya29.fresh-B" in google.tokens

    status, answer = post_form(f"{google.url}/token", form | {"refresh_token": "1//unknown"})
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert google.calls() == ["POST /token", "POST /token"]
    assert urllib.parse.parse_qs(google.requests[0].body.decode())["refresh_token"] == ["1//refresh-B"]

    request = urllib.request.Request(
        f"{google.url}/v1internal:loadCodeAssist",
        data=b"{}",
        headers={"authorization": "Bearer ya29.fresh-B", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as loaded:
        assert json.loads(loaded.read())["currentTier"] == {"id": "free-tier"}
