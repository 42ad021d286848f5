"""Unit tests of relay_core's pure parts: pricing, headers, routes, crypto, scheduling."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from relay_core.crypto import RECENT_RESULTS
from relay_core.crypto import DecryptError
from relay_core.crypto import Keyring
from relay_core.errors import RelayError
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.pricing import library_price_usd
from relay_core.pricing import price_usd
from relay_core.protocols import classify
from relay_core.protocols.anthropic.request_body import parse_message_request
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.protocols.anthropic.upstream import credential_headers
from relay_core.protocols.anthropic.upstream import is_dropped
from relay_core.protocols.anthropic.upstream import merge_beta
from relay_core.protocols.base import RequestRoute
from relay_core.routes import Route
from relay_core.upstream import Target
from relay_core.upstream import target_of
from relay_core.usage import TokenUsage


def usage(**counts: int) -> TokenUsage:
    return TokenUsage(**counts)


def test_acceptance_price_example() -> None:
    cost = price_usd(
        "claude-opus-4-8",
        usage(
            input_tokens=1234,
            output_tokens=321,
            cache_read_input_tokens=30000,
            cache_write_5m_tokens=1500,
            cache_write_1h_tokens=500,
        ),
        {},
    )
    assert cost == Decimal("0.04357")


def test_price_ignores_1m_suffix_and_uses_overrides_for_unknown_models() -> None:
    tokens = usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert price_usd("claude-sonnet-4-5-20250929[1m]", tokens, {}) == price_usd(
        "claude-sonnet-4-5-20250929", tokens, {}
    )
    assert price_usd("my-local-model", tokens, {}) is None
    assert price_usd("my-local-model", tokens, {"my-local-model": {"input": 1, "output": 2}}) == Decimal(3)


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5-20250929"],
)
def test_cached_linear_prices_equal_the_librarys_to_the_last_digit(model: str) -> None:
    rng = random.Random(model)
    for _ in range(200):
        tokens = TokenUsage(*(rng.randint(0, 500_000) for _ in range(5)), rng.randint(0, 9))
        assert price_usd(model, tokens, {}) == library_price_usd(model, tokens), tokens


def test_sonnet_4_5_long_context_pays_the_premium() -> None:
    short = price_usd("claude-sonnet-4-5-20250929", usage(input_tokens=100_000, output_tokens=1000), {})
    long = price_usd("claude-sonnet-4-5-20250929", usage(input_tokens=300_000, output_tokens=1000), {})
    assert short == Decimal("0.315")  # 100k x $3 + 1k x $15
    assert long == Decimal("1.8225")  # 300k x $6 + 1k x $22.50


def test_merge_beta_keeps_order_and_adds_once() -> None:
    assert merge_beta(None, "oauth-2025-04-20") == "oauth-2025-04-20"
    assert merge_beta("a, b,a", "oauth") == "a,b,oauth"
    assert merge_beta("oauth,b", "oauth") == "oauth,b"


def test_client_credentials_and_proxy_hints_are_dropped() -> None:
    for name in (
        "Authorization",
        "X-Api-Key",
        "Cookie",
        "X-Forwarded-For",
        "CF-Connecting-IP",
        "Proxy-Authorization",
        "Accept-Encoding",
    ):
        assert is_dropped(name), name
    for name in ("anthropic-beta", "anthropic-version", "x-app", "user-agent", "x-claude-code-session-id"):
        assert not is_dropped(name), name


def test_credential_headers_per_account_kind() -> None:
    oauth = Account(name="o", kind=AccountKind.OAUTH, sealed_secret="x")
    console = Account(name="c", kind=AccountKind.CONSOLE, sealed_secret="x")
    assert credential_headers(oauth, "tok", "b1", "oauth-b") == {
        "accept-encoding": "identity",
        "authorization": "Bearer tok",
        "anthropic-beta": "b1,oauth-b",
    }
    assert credential_headers(console, "key", "b1", "oauth-b") == {"accept-encoding": "identity", "x-api-key": "key"}


def test_target_of_base_urls() -> None:
    assert target_of("https://api.anthropic.com") == Target("https", "api.anthropic.com", 443, "")
    assert target_of("http://127.0.0.1:8001/api/anthropic/") == Target("http", "127.0.0.1", 8001, "/api/anthropic")
    with pytest.raises(ValueError):
        target_of("ftp://x")


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1/messages?beta=true", AnthropicRoute.MESSAGES),
        ("POST", "/v1/messages/count_tokens?beta=true", AnthropicRoute.COUNT_TOKENS),
        ("GET", "/v1/models?limit=1000", AnthropicRoute.MODELS),
        ("GET", "/v1/models/claude-opus-4-8", AnthropicRoute.MODELS),
        ("HEAD", "/", Route.PROBE),
        ("GET", "/health", Route.HEALTH),
        ("POST", "/api/event_logging/batch", AnthropicRoute.TELEMETRY),
        ("POST", "/api/event_logging/v2/batch", AnthropicRoute.TELEMETRY),  # Claude Code to api.anthropic.com
        ("GET", "/v1/messages", Route.UNKNOWN),
        ("POST", "/v1/messages/batches", Route.UNKNOWN),
        ("DELETE", "/v1/files/x", Route.UNKNOWN),
    ],
)
def test_routes(method: str, path: str, route: RequestRoute) -> None:
    assert classify(method, path).route is route


def test_keyring_hashes_and_seals() -> None:
    ring = Keyring("s" * 40)
    assert ring.hash_team_key("rk-a") == Keyring("s" * 40).hash_team_key("rk-a") != ring.hash_team_key("rk-b")
    sealed = ring.seal("sk-ant-oat01-secret", "acct1")
    assert "secret" not in sealed
    assert ring.open(sealed, "acct1") == "sk-ant-oat01-secret"
    with pytest.raises(DecryptError):
        ring.open(sealed, "acct2")  # bound to its account
    with pytest.raises(DecryptError):
        Keyring("t" * 40).open(sealed, "acct1")


def test_the_keyring_keeps_recent_results_bounded_and_never_a_failed_open() -> None:
    """Hashes and opened secrets are kept per process for the request path: by key and by (sealed, account),
    at most RECENT_RESULTS of each, and a refusal is decided anew each time."""
    ring = Keyring("s" * 40)
    sealed = ring.seal("sk-ant-api03-secret", "acct1")
    for _ in range(3):
        assert ring.open(sealed, "acct1") == "sk-ant-api03-secret"
        with pytest.raises(DecryptError):
            ring.open(sealed, "acct2")
    assert ring._opened.cache_info().hits == 2 and ring._opened.cache_info().currsize == 1
    for n in range(RECENT_RESULTS + 50):
        ring.hash_team_key(f"rk-flood-{n}")
    assert ring._team_key_hashes.cache_info().currsize == RECENT_RESULTS
    assert ring.hash_team_key("rk-flood-0") == Keyring("s" * 40).hash_team_key("rk-flood-0")


def test_parse_message_request() -> None:
    parsed = parse_message_request(b'{"model": "claude-opus-4-8", "stream": true, "x": 1}')
    assert (parsed.model, parsed.stream) == ("claude-opus-4-8", True)
    for bad in (b"", b"\xff\xfe", b"null", b'{"model": ""}', b'{"model": "m", "stream": 1}'):
        with pytest.raises(RelayError) as caught:
            parse_message_request(bad)
        assert caught.value.status == 400


def test_example_config_documents_and_loads_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from relay_core.settings import Settings

    example = Path(__file__).parents[1] / "config" / "relay.example.toml"
    text = example.read_text()
    for name in Settings.model_fields:
        assert f"{name} =" in text or f"[{name}]" in text or f"[{name}." in text, f"{name} undocumented"
    monkeypatch.setenv("RELAY_CONFIG", str(example))
    monkeypatch.delenv("RELAY_LISTEN", raising=False)
    assert Settings().listen == "127.0.0.1:8080"
    monkeypatch.setenv("RELAY_LISTEN", "0.0.0.0:9000")
    assert Settings().listen_port == 9000  # the environment wins over the file


@pytest.mark.parametrize("zone_name", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_periods_turn_over_at_local_midnight_even_within_one_cached_minute(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    midnight = dt.datetime(2026, 3, 1, tzinfo=zone).timestamp()  # a Sunday, first of a month
    before, after = periods(midnight - 0.001, zone), periods(midnight, zone)
    assert (before["day"].id, before["week"].id, before["month"].id) == ("2026-02-28", "2026-W09", "2026-02")
    assert (after["day"].id, after["week"].id, after["month"].id) == ("2026-03-01", "2026-W09", "2026-03")
    assert before["day"].resets_at == midnight
    assert after["day"].resets_at == dt.datetime(2026, 3, 2, tzinfo=zone).timestamp()
    assert after["week"].resets_at == dt.datetime(2026, 3, 2, tzinfo=zone).timestamp()
    assert periods(midnight + 59.9, zone) is after  # cached for the minute
    assert after["total"].resets_at is None
