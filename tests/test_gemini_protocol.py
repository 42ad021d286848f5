"""The Gemini protocol's rules, without a relay process: routes, the team key, paths, usage, health, errors."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from relay_core.errors import RelayError
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.models import AccountKind
from relay_core.pricing import price_known
from relay_core.pricing import price_usd
from relay_core.protocols import classify
from relay_core.protocols.gemini.protocol import GeminiProtocol
from relay_core.protocols.gemini.routes import GeminiRoute
from relay_core.protocols.gemini.upstream import upstream_path
from relay_core.usage import TokenUsage
from tests.support.fake_google import api_quota_exceeded
from tests.support.fake_google import quota_exhausted

PROTOCOL = GeminiProtocol()
RULES = HealthRules()
NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent", GeminiRoute.GENERATE),
        ("POST", "/gemini/v1beta/models/gemini-2.5-pro:generateContent", GeminiRoute.GENERATE),
        ("POST", "/gemini/v1/models/gemini-2.5-flash:countTokens", GeminiRoute.COUNT_TOKENS),
        ("GET", "/gemini/v1beta/models", GeminiRoute.MODELS),
        ("GET", "/gemini/v1beta/models/gemini-2.5-pro", GeminiRoute.MODELS),
        ("POST", "/gemini/v1internal:streamGenerateContent", GeminiRoute.ASSIST_GENERATE),
        ("POST", "/gemini/v1internal:countTokens", GeminiRoute.ASSIST_COUNT_TOKENS),
        ("POST", "/gemini/v1internal:loadCodeAssist", GeminiRoute.ASSIST_LOAD),
        ("POST", "/gemini/v1internal:onboardUser", GeminiRoute.ASSIST_ONBOARD),
        ("POST", "/gemini/v1internal:recordCodeAssistMetrics", GeminiRoute.ASSIST_OTHER),
        ("GET", "/gemini/v1internal/operations/abc", GeminiRoute.ASSIST_OTHER),
    ],
)
def test_routes(method: str, path: str, route: GeminiRoute) -> None:
    classified = classify(method, path + "?alt=sse")
    assert classified.protocol.name == "gemini" and classified.route is route


def test_set_up_calls_are_answered_by_the_relay_and_never_404() -> None:
    load = PROTOCOL.answer_locally(GeminiRoute.ASSIST_LOAD)
    assert load is not None and load[0] == 200
    assert json.loads(load[1])["currentTier"]["id"] == "free-tier"
    assert json.loads(load[1])["cloudaicompanionProject"]
    other = PROTOCOL.answer_locally(GeminiRoute.ASSIST_OTHER)
    assert other is not None and json.loads(other[1]) == {}
    assert PROTOCOL.answer_locally(GeminiRoute.GENERATE) is None


def test_each_method_is_served_by_its_own_kind_of_account() -> None:
    assert PROTOCOL.serves(GeminiRoute.GENERATE, AccountKind.GEMINI_API_KEY)
    assert not PROTOCOL.serves(GeminiRoute.GENERATE, AccountKind.GEMINI_OAUTH)
    assert PROTOCOL.serves(GeminiRoute.ASSIST_GENERATE, AccountKind.GEMINI_OAUTH)
    assert not any(PROTOCOL.serves(r, k) for r in GeminiRoute for k in (AccountKind.OAUTH, AccountKind.CONSOLE))
    claude = classify("POST", "/v1/messages").protocol
    assert not claude.serves(classify("POST", "/v1/messages").route, AccountKind.GEMINI_API_KEY)


def test_the_team_key_comes_from_any_of_googles_places_and_never_leaves_in_the_path() -> None:
    assert PROTOCOL.presented_key({"x-goog-api-key": "rk-a"}, "/gemini/x") == "rk-a"
    assert PROTOCOL.presented_key({"authorization": "Bearer rk-b"}, "/gemini/x") == "rk-b"
    assert PROTOCOL.presented_key({}, "/gemini/v1beta/models/m:generateContent?key=rk-c&alt=sse") == "rk-c"
    assert PROTOCOL.presented_key({}, "/gemini/x") is None
    path = "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?key=rk-c&alt=sse"
    assert upstream_path(path) == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert upstream_path("/gemini/v1internal:loadCodeAssist") == "/v1internal:loadCodeAssist"
    for header in ("x-goog-api-key", "authorization", "x-api-key", "x-gemini-api-privileged-user-id"):
        assert PROTOCOL.is_dropped(header)


def test_the_model_comes_from_the_path_or_the_code_assist_body() -> None:
    api = PROTOCOL.parse_request(
        b'{"contents":[]}', GeminiRoute.GENERATE, "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    assert (api.model, api.stream) == ("gemini-2.5-pro", True)
    body = {"model": "gemini-3-flash", "project": "p", "request": {"session_id": "s-1", "contents": []}}
    assist = PROTOCOL.parse_request(
        json.dumps(body).encode(), GeminiRoute.ASSIST_GENERATE, "/gemini/v1internal:generateContent"
    )
    assert (assist.model, assist.stream, PROTOCOL.body_session(assist)) == ("gemini-3-flash", False, "s-1")
    with pytest.raises(RelayError) as refused:
        PROTOCOL.parse_request(b"[1]", GeminiRoute.ASSIST_GENERATE, "/gemini/v1internal:generateContent")
    assert json.loads(PROTOCOL.error_body(refused.value, "r"))["error"]["status"] == "INVALID_ARGUMENT"


def sse(*events: object) -> list[bytes]:
    return [f"data: {json.dumps(e)}\r\n\r\n".encode() for e in events]


def test_stream_usage_is_the_last_reading_however_the_bytes_are_cut() -> None:
    middle = {
        "response": {
            "candidates": [{"content": {"parts": [{"text": "Hel"}]}}],
            "usageMetadata": {"promptTokenCount": 1234, "totalTokenCount": 1234},
        }
    }
    last = {
        "response": {
            "candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 1234,
                "cachedContentTokenCount": 1000,
                "candidatesTokenCount": 56,
                "thoughtsTokenCount": 78,
            },
            "modelVersion": "gemini-2.5-pro",
        }
    }
    whole = b"".join(sse(middle, middle, last))
    for size in (1, 7, len(whole)):
        meter = PROTOCOL.stream_meter("")
        for at in range(0, len(whole), size):
            meter.feed(whole[at : at + size])
        meter.feed(b"")
        assert meter.usage == TokenUsage(
            input_tokens=234, cache_read_input_tokens=1000, output_tokens=134, thinking_tokens=78
        )
        assert meter.saw_message_delta and meter.model == "gemini-2.5-pro" and meter.output_chars == 8


def test_an_error_in_a_stream_is_seen_bare_or_in_an_array() -> None:
    for payload in (
        {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}},
        [{"error": {"code": 500, "status": "INTERNAL"}}],
    ):
        meter = PROTOCOL.stream_meter("")
        meter.feed(f"data: {json.dumps(payload)}\n\n".encode())
        assert meter.error is not None and not meter.saw_message_delta


def test_a_code_assist_quota_cools_that_model_until_its_reset_and_moves_on() -> None:
    from relay_core.protocols.gemini import health

    reply = quota_exhausted("gemini-2.5-pro", 8 * 3600 + 44 * 60 + 7)
    outcome = health.judge(429, {}, reply.body, AccountKind.GEMINI_OAUTH, RULES, now=NOW)
    assert outcome.failover and outcome.cool_family == "gemini-2.5-pro"
    assert outcome.cool_until == NOW + 8 * 3600 + 44 * 60 + 7
    assert PROTOCOL.judge_answer(429, {}, reply.body, AccountKind.GEMINI_OAUTH, RULES).cool_family == "gemini-2.5-pro"


def test_health_judgements() -> None:
    from relay_core.protocols.gemini import health

    quota = quota_exhausted("gemini-2.5-pro", 3600)
    cooled = health.judge(429, {}, quota.body, AccountKind.GEMINI_OAUTH, RULES, now=NOW)
    assert cooled.cool_until == NOW + 3600 and cooled.failover
    per_minute = api_quota_exceeded("gemini-2.5-flash", 26)
    cooled = health.judge(429, {}, per_minute.body, AccountKind.GEMINI_API_KEY, RULES, now=NOW)
    assert cooled.cool_until == NOW + 26
    capacity = json.dumps(
        {
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "MODEL_CAPACITY_EXHAUSTED"}
                ],
            }
        }
    ).encode()
    assert (
        health.judge(429, {}, capacity, AccountKind.GEMINI_OAUTH, RULES, now=NOW).cool_until
        == NOW + RULES.overload_cooldown_s
    )
    bad_key = json.dumps(
        {
            "error": {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
            }
        }
    ).encode()
    assert health.judge(400, {}, bad_key, AccountKind.GEMINI_API_KEY, RULES).new_state is AccountState.UNAUTHORIZED
    assert health.judge(401, {}, b"{}", AccountKind.GEMINI_OAUTH, RULES).new_state is AccountState.UNAUTHORIZED
    assert health.judge(403, {}, b"{}", AccountKind.GEMINI_OAUTH, RULES).new_state is AccountState.BLOCKED
    failed = health.judge(500, {}, b"{}", AccountKind.GEMINI_OAUTH, RULES)
    assert failed.count_failure and failed.failover and not failed.account_unavailable
    plain = health.judge(
        400, {}, b'{"error":{"code":400,"status":"INVALID_ARGUMENT"}}', AccountKind.GEMINI_API_KEY, RULES
    )
    assert not plain.failover and not plain.account_unavailable  # the request's fault: passed on as it is


def test_refusals_tell_the_cli_whether_to_wait_or_stop() -> None:
    """Gemini CLI waits out a RetryInfo delay of up to 300 s and retries; a longer one ends its run at once."""
    soon = RelayError(429, "rate_limit_error", "busy", retry_after=7, should_retry=True)
    retry = json.loads(PROTOCOL.error_body(soon, "r"))["error"]
    assert retry["status"] == "RESOURCE_EXHAUSTED" and retry["message"] == "busy"
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in retry["details"]
    assert {d.get("reason") for d in retry["details"]} == {"RATE_LIMIT_EXCEEDED", None}
    for final_error in (
        RelayError(429, "rate_limit_error", "spent", should_retry=False),
        RelayError(429, "rate_limit_error", "cooling for 3 h", retry_after=10800, should_retry=False),
    ):
        final = json.loads(PROTOCOL.error_body(final_error, "r"))["error"]
        delays = [d["retryDelay"] for d in final["details"] if "retryDelay" in d]
        assert len(delays) == 1 and int(delays[0].removesuffix("s")) > 300, final
        assert "QUOTA_EXHAUSTED" in {d.get("reason") for d in final["details"]}
        assert "exhausted your capacity" not in json.dumps(final)  # that text makes the CLI sleep out any delay
    unauthorized = json.loads(PROTOCOL.error_body(RelayError(401, "authentication_error", "no key"), "r"))
    assert unauthorized == {"error": {"code": 401, "message": "no key", "status": "UNAUTHENTICATED"}}
    assert PROTOCOL.error_type(json.dumps([unauthorized]).encode()) == "UNAUTHENTICATED"


def test_prices_use_googles_rates_and_names() -> None:
    usage = TokenUsage(input_tokens=900, cache_read_input_tokens=100, output_tokens=50, thinking_tokens=20)
    assert price_usd("gemini-2.5-pro", usage, {}) == Decimal("0.0016375")  # 900*1.25 + 100*0.125 + 50*10 per MTok
    assert price_known("gemini-3-flash", {}) and price_known("models/gemini-2.5-flash", {})
    long = TokenUsage(input_tokens=260_000, cache_read_input_tokens=40_000, output_tokens=10_000)
    assert price_usd("gemini-2.5-pro", long, {}) == Decimal("0.81")  # the >200k tier applies to the whole request
