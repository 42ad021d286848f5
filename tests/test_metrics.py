"""Prometheus metrics: RelayMetrics' values and text format, the addon's /metrics endpoint, and end to end
that a relay's counters agree exactly with its usage report."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal

import anthropic
import pytest
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from addons.bundle import relay_chain
from addons.common import refuse
from addons.fail_closed_gate import FailClosedGate
from addons.metrics import TIMING_KEY
from addons.metrics import Metrics
from addons.metrics import _MetricsTally
from addons.metrics import _Timing
from addons.metrics import metrics_authorized
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.errors import unauthenticated
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.health import QuotaWindow
from relay_core.metrics import CONTENT_TYPE
from relay_core.metrics import RelayMetrics
from relay_core.metrics import is_loopback
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.protocols.anthropic.errors import error_body
from relay_core.protocols.anthropic.errors import error_type
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.records import UsageRecord
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.relay_process import RelayProcess

MODEL = "claude-opus-4-8"
UNIFIED = "anthropic-ratelimit-unified-"
MESSAGES = [{"role": "user", "content": "hello"}]
USAGE = TokenUsage(
    input_tokens=10, output_tokens=20, cache_read_input_tokens=30, cache_write_5m_tokens=40, cache_write_1h_tokens=50
)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition by name and labels (parsing it also checks the format)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in found.items() if sample == name and wanted <= have)


# --- RelayMetrics ---------------------------------------------------------------------------------------------


def test_response_counts_requests_tokens_cost_and_timings() -> None:
    metrics = RelayMetrics()
    for _ in range(2):
        metrics.observe_response("messages", 200, "alice", "max-1", MODEL, USAGE, Decimal("0.25"), 0.5, 3.0)
    found = samples(metrics.render().decode())

    assert total(found, "relay_requests_total", route="messages", status="200", key="alice", model=MODEL) == 2
    expected = {"input": 20, "output": 40, "cache_read": 60, "cache_write_5m": 80, "cache_write_1h": 100}
    for kind, tokens in expected.items():
        assert total(found, "relay_tokens_total", kind=kind, key="alice", account="max-1", model=MODEL) == tokens
    assert total(found, "relay_cost_usd_total", key="alice", account="max-1", model=MODEL) == pytest.approx(0.5)
    assert total(found, "relay_time_to_first_byte_seconds_count", account="max-1") == 2
    assert total(found, "relay_time_to_first_byte_seconds_sum", account="max-1") == pytest.approx(1.0)
    assert total(found, "relay_upstream_latency_seconds_count", account="max-1") == 2
    assert total(found, "relay_upstream_latency_seconds_bucket", account="max-1", le="5.0") == 2
    assert total(found, "relay_upstream_latency_seconds_bucket", account="max-1", le="2.5") == 0


def test_unmetered_refused_and_failed_requests() -> None:
    metrics = RelayMetrics()
    metrics.observe_response("count_tokens", 200, "alice", "max-1", MODEL, None, None, 0.1, 0.2)
    metrics.observe_response("messages", 401, None, None, None, None, None, None, None)
    metrics.observe_response("messages", 0, "alice", "max-1", MODEL, TokenUsage(), Decimal(0), None, None)
    found = samples(metrics.render().decode())

    assert total(found, "relay_tokens_total", key="alice", model=MODEL) == 0
    assert total(found, "relay_requests_total", route="count_tokens", status="200") == 1
    unauthenticated_labels = {"route": "messages", "status": "401", "key": "", "account": "", "model": ""}
    assert total(found, "relay_requests_total", **unauthenticated_labels) == 1
    assert total(found, "relay_requests_total", route="messages", status="error", key="alice") == 1
    assert total(found, "relay_time_to_first_byte_seconds_count") == 1  # only the exchange that had timings


def test_model_labels_drop_the_1m_suffix_and_are_capped() -> None:
    metrics = RelayMetrics(max_models=2)
    for model in ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5", "claude-haiku-4-5", "made-up-1", "made-up-2"):
        metrics.observe_response("messages", 200, "alice", "max-1", model, None, None, None, None)
    found = samples(metrics.render().decode())

    models = {dict(labels)["model"] for (name, labels) in found if name == "relay_requests_total"}
    assert models == {"claude-sonnet-4-5", "claude-haiku-4-5", "other"}
    assert total(found, "relay_requests_total", model="claude-sonnet-4-5") == 2
    assert total(found, "relay_requests_total", model="other") == 2


def test_refusals_by_reason() -> None:
    metrics = RelayMetrics()
    for reason in ("authentication_error", "authentication_error", "billing_error", "<script>", ""):
        metrics.observe_refusal(reason)
    found = samples(metrics.render().decode())

    assert total(found, "relay_refusals_total", reason="authentication_error") == 2
    assert total(found, "relay_refusals_total", reason="billing_error") == 1
    assert total(found, "relay_refusals_total", reason="unknown") == 2


def test_each_instance_has_its_own_registry() -> None:
    first, second = RelayMetrics(), RelayMetrics()
    first.observe_refusal("rate_limit_error")
    assert total(samples(second.render().decode()), "relay_refusals_total") == 0
    assert b"# TYPE relay_requests_total counter" in first.render()


def test_signin_end_gauge_is_replaced_as_a_whole() -> None:
    metrics = RelayMetrics()
    metrics.set_signin_ends({"max-1": 1_900_000_000.0, "max-2": 1_900_500_000.0})
    found = samples(metrics.render().decode())
    assert total(found, "relay_account_signin_end_timestamp_seconds", account="max-1") == 1_900_000_000
    assert total(found, "relay_account_signin_end_timestamp_seconds", account="max-2") == 1_900_500_000
    metrics.set_signin_ends({"max-2": 1_900_600_000.0})  # max-1 deleted (or renamed), max-2 signed in again
    found = samples(metrics.render().decode())
    names = {
        dict(labels)["account"] for (name, labels) in found if name == "relay_account_signin_end_timestamp_seconds"
    }
    assert names == {"max-2"}
    assert total(found, "relay_account_signin_end_timestamp_seconds", account="max-2") == 1_900_600_000


def test_quota_gauges_per_account_and_window_are_replaced_as_a_whole() -> None:
    metrics = RelayMetrics()
    metrics.set_quota(
        {"max-1": {"5h": QuotaWindow(0.95, 1_900_000_000.0), "7d_opus": QuotaWindow(0.5, None)}, "max-2": {}}
    )
    found = samples(metrics.render().decode())
    assert total(found, "relay_account_quota_utilization", account="max-1", window="5h") == 0.95
    assert total(found, "relay_account_quota_reset_seconds", account="max-1", window="5h") == 1_900_000_000
    assert total(found, "relay_account_quota_utilization", account="max-1", window="7d_opus") == 0.5
    assert ("relay_account_quota_reset_seconds", frozenset({("account", "max-1"), ("window", "7d_opus")})) not in found
    metrics.set_quota({})
    assert not [name for name, _ in samples(metrics.render().decode()) if name.startswith("relay_account_quota")]


# --- The addon, at unit level ---------------------------------------------------------------------------------


def metrics_flow(authorization: str | None = None, method: str = "GET", path: str = "/metrics") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.method = method
    flow.request.path = path
    if authorization is not None:
        flow.request.headers["authorization"] = authorization
    return flow


def test_metrics_authorized() -> None:
    assert metrics_authorized(None, None)
    assert metrics_authorized("Bearer anything", None)
    assert metrics_authorized("Bearer s3cret", "s3cret")
    assert metrics_authorized("bearer  s3cret ", "s3cret")
    assert not metrics_authorized(None, "s3cret")
    assert not metrics_authorized("Bearer wrong", "s3cret")
    assert not metrics_authorized("Basic s3cret", "s3cret")
    assert not metrics_authorized("s3cret", "s3cret")
    # Without a token, only this machine may read every key's name and spend.
    assert not metrics_authorized(None, None, from_loopback=False)
    assert metrics_authorized("Bearer s3cret", "s3cret", from_loopback=False)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("::ffff:10.0.0.5", False),
        ("2001:db8::1", False),
        ("", False),
        ("not-an-address", False),
    ],
)
def test_only_loopback_peers_count_as_this_machine(host: str, local: bool) -> None:
    assert is_loopback(host) is local


def test_endpoint_is_open_without_a_token() -> None:
    addon = Metrics(RelayRuntime())
    addon.metrics.observe_refusal("billing_error")
    with taddons.context(addon):
        flow = metrics_flow(path="/metrics?x=1")
        asyncio.run(addon.requestheaders(flow))
    assert flow.response is not None
    assert flow.response.status_code == 200
    assert flow.response.headers["content-type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert total(samples(flow.response.text or ""), "relay_refusals_total", reason="billing_error") == 1


def test_scrape_shows_the_sign_in_ends_the_refresher_last_read(settings: Settings) -> None:
    """The gauge comes from the background refresher's last pass over the accounts: a scrape reads no store."""
    runtime = Runtime(settings)
    runtime.refresher.signin_ends = {"max-1": 1_900_000_000.0}
    addon = Metrics(RelayRuntime(runtime))
    with taddons.context(addon):
        flow = metrics_flow()
        asyncio.run(addon.requestheaders(flow))
    assert flow.response is not None and flow.response.status_code == 200
    found = samples(flow.response.text or "")
    assert total(found, "relay_account_signin_end_timestamp_seconds", account="max-1") == 1_900_000_000


def test_endpoint_with_a_token_refuses_in_anthropic_shape(settings: Settings) -> None:
    addon = Metrics(RelayRuntime(Runtime(settings.model_copy(update={"metrics_token": "s3cret"}))))
    with taddons.context(addon):
        addon.running()
        for authorization in (None, "Bearer wrong", "s3cret"):
            flow = metrics_flow(authorization)
            asyncio.run(addon.requestheaders(flow))
            assert flow.response is not None
            assert flow.response.status_code == 401
            assert flow.response.headers["www-authenticate"].startswith("Bearer")
            body = json.loads(flow.response.content or b"")
            assert body["type"] == "error"
            assert body["error"]["type"] == "authentication_error"
            assert b"s3cret" not in flow.response.content
        flow = metrics_flow("Bearer s3cret")
        asyncio.run(addon.requestheaders(flow))
        assert flow.response is not None
        assert flow.response.status_code == 200
        assert b"relay_requests_total" in flow.response.content


def test_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="metrics_token"):
        Settings(metrics_token=" ")


def test_other_requests_are_left_to_the_chain() -> None:
    addon = Metrics(RelayRuntime())
    with taddons.context(addon):
        for flow in (metrics_flow(method="POST"), metrics_flow(path="/metricsx"), metrics_flow(path="/v1/messages")):
            asyncio.run(addon.requestheaders(flow))
            assert flow.response is None


def test_the_bundle_ends_with_the_gate_then_the_tally_in_its_one_chain_entry() -> None:
    """After every other hook of the relay: the gate refuses what was not routed, then the tally counts the
    answer as the client gets it; neither is an entry of mitmproxy's own (each would cost every hook a call)."""
    chain = relay_chain()
    *_, gate, tally = chain._addons
    assert isinstance(gate, FailClosedGate) and isinstance(tally, _MetricsTally)
    with taddons.context(chain) as tctx:
        assert tctx.master.addons.chain.count(chain) == 1
        assert not {type(addon) for addon in tctx.master.addons.chain} & {FailClosedGate, _MetricsTally}


def routed_state(**fields) -> FlowState:
    key = TeamKey(name="alice", key_hash="h", hint="rk-abcd")
    account = Account(name="max-1", kind=AccountKind("oauth"), sealed_secret="sealed")
    return FlowState(
        route=AnthropicRoute.MESSAGES, protocol=AnthropicProtocol(), key=key, account=account, routed=True, **fields
    )


def test_tally_counts_what_the_client_got_with_upstream_timings() -> None:
    """Failover replaced the upstream's 429 with its own 529: counted as a refusal, timed as the upstream."""
    addon = Metrics(RelayRuntime())
    tally = addon.tally
    flow = tflow.tflow()
    state = routed_state()
    state.usage = UsageRecord(at=0, key_id="k", account_id="a", model=MODEL, usage=USAGE, cost_usd=Decimal("1.5"))
    flow.metadata[METADATA_KEY] = state
    flow.request.timestamp_start = 100.0
    tally.request(flow)
    assert isinstance(flow.metadata[TIMING_KEY], _Timing)
    flow.metadata[TIMING_KEY] = _Timing(sent=101.0)
    flow.response = tflow.tresp(status_code=429, timestamp_start=102.5, timestamp_end=104.0)
    tally.responseheaders(flow)
    error = RelayError(529, "overloaded_error", "retry now")
    flow.response = http.Response.make(529, error_body(error, state.request_id), error.headers(state.request_id))
    tally.response(flow)
    found = samples(addon.metrics.render().decode())

    assert total(found, "relay_requests_total", status="529", key="alice", account="max-1", model=MODEL) == 1
    assert total(found, "relay_refusals_total", reason="overloaded_error") == 1
    assert total(found, "relay_tokens_total", kind="cache_write_1h", key="alice") == 50
    assert total(found, "relay_cost_usd_total", key="alice") == 1.5
    assert total(found, "relay_time_to_first_byte_seconds_sum", account="max-1") == pytest.approx(2.5)
    assert total(found, "relay_upstream_latency_seconds_sum", account="max-1") == pytest.approx(3.0)


def test_tally_counts_refusals_without_timings() -> None:
    addon = Metrics(RelayRuntime())
    flow = tflow.tflow()
    flow.metadata[METADATA_KEY] = FlowState(route=AnthropicRoute.MESSAGES, protocol=AnthropicProtocol())
    refuse(flow, unauthenticated("no key"))
    for hook in (addon.tally.request, addon.tally.responseheaders, addon.tally.response):
        hook(flow)
    found = samples(addon.metrics.render().decode())

    assert total(found, "relay_requests_total", route="messages", status="401", key="") == 1
    assert total(found, "relay_refusals_total", reason="authentication_error") == 1
    assert total(found, "relay_time_to_first_byte_seconds_count") == 0


def test_tally_never_raises_into_a_flow(caplog: pytest.LogCaptureFixture) -> None:
    addon = Metrics(RelayRuntime())  # no runtime: making a usage record fails
    flow = tflow.tflow(resp=True)
    flow.metadata[METADATA_KEY] = routed_state()
    addon.tally.response(flow)
    assert "could not count a response" in caplog.text
    assert error_type(b"not json") == error_type(b'{"error": 1}') == "unknown"


# --- End to end -----------------------------------------------------------------------------------------------


def scrape(relay: RelayProcess) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def post_without_key(relay: RelayProcess) -> int:
    body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": MESSAGES}).encode()
    request = urllib.request.Request(relay.url + "/v1/messages", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("engine", ["serve", "mitmdump"])
def test_metrics_agree_with_the_usage_report(
    start_relay: Callable[..., RelayProcess], admin: Admin, upstream: FakeUpstream, engine: str
) -> None:
    relay = start_relay(engine, USER_MESSAGE_QUEUE_ENABLED="false")
    alice, bob = admin.create_key("alice"), admin.create_key("bob")
    admin.add_account("limited", "tok-limited", kind="oauth", priority=90)
    admin.add_account("healthy", "tok-healthy", kind="oauth", priority=50)
    limited_once = iter([True])

    def reply(seen: Seen) -> Reply:
        """The first request meets a rate-limited account; Failover cools it and sends the request on."""
        if seen.headers.get("authorization") == "Bearer tok-limited" and next(limited_once, False):
            body = b'{"type":"error","error":{"type":"rate_limit_error","message":"limited"}}'
            reset = str(int(time.time() + 3600))
            headers = {UNIFIED + "status": "rejected", UNIFIED + "reset": reset, "retry-after": "3600"}
            return Reply(status=429, headers={**headers, UNIFIED + "representative-claim": "five_hour"}, body=body)
        if seen.json().get("stream"):
            return upstream.default_reply(seen)
        return Reply(body=message_json(MODEL, upstream.usage), header_delay=0.05)

    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    upstream.handler = reply
    assert (
        anthropic.Anthropic(base_url=relay.url, auth_token=alice, max_retries=0)
        .messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
        .content
    )
    non_streamed, streamed = 3, 2
    for key, count in ((alice, non_streamed), (bob, 1)):
        sdk = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
        for _ in range(count):
            sdk.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    for _ in range(streamed):
        with anthropic.Anthropic(base_url=relay.url, auth_token=bob, max_retries=0).messages.stream(
            model=MODEL, max_tokens=5, messages=MESSAGES
        ) as stream:
            stream.until_done()
    assert post_without_key(relay) == 401
    relayed = 1 + non_streamed + 1 + streamed
    failed_over = {"alice": 1}  # the limited account's attempt: in the usage report, never answered to a client
    rows = admin.wait_for_requests(relayed + 1)  # the tally counted each before its last byte left; the store lags

    status, content_type, text = scrape(relay)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    found = samples(text)
    assert {row["key"] for row in rows} == {"alice", "bob"}
    for row in rows:
        key = row["key"]
        answered = total(found, "relay_requests_total", route="messages", key=key)
        assert answered + failed_over.get(key, 0) == row["requests"]
        assert total(found, "relay_tokens_total", kind="input", key=key) == row["input_tokens"]
        assert total(found, "relay_tokens_total", kind="output", key=key) == row["output_tokens"]
        assert total(found, "relay_tokens_total", kind="cache_read", key=key) == row["cache_read_input_tokens"]
        assert total(found, "relay_tokens_total", kind="cache_write_5m", key=key) == row["cache_write_5m_tokens"]
        assert total(found, "relay_tokens_total", kind="cache_write_1h", key=key) == row["cache_write_1h_tokens"]
        assert total(found, "relay_cost_usd_total", key=key) == pytest.approx(row["cost_usd"], abs=1e-9)
    for row in admin.usage(by="account"):
        account = row["account"]
        answered = total(found, "relay_requests_total", route="messages", account=account)
        assert answered + total(found, "relay_failovers_total", account=account) == row["requests"]  # every attempt
        assert total(found, "relay_tokens_total", kind="output", account=account) == row["output_tokens"]

    assert total(found, "relay_requests_total", route="messages", key="alice", status="200") == 1 + non_streamed
    assert total(found, "relay_failovers_total", account="limited") == 1
    assert total(found, "relay_requests_total", route="messages", account="limited") == 0  # no client saw it
    assert total(found, "relay_requests_total", route="messages", key="bob", status="200", model=MODEL) == 3
    assert total(found, "relay_requests_total", route="messages", status="401", key="") == 1
    assert total(found, "relay_refusals_total", reason="authentication_error") == 1
    assert total(found, "relay_refusals_total", reason="overloaded_error") == 0  # no 529 retry-now any more
    assert total(found, "relay_upstream_latency_seconds_count") == relayed
    assert total(found, "relay_time_to_first_byte_seconds_count", account="healthy") == relayed
    assert total(found, "relay_time_to_first_byte_seconds_count", account="limited") == 0
    assert total(found, "relay_time_to_first_byte_seconds_sum", account="healthy") >= 0.05 * (relayed - streamed)
    assert "tok-" not in text and alice not in text and bob not in text


def test_metrics_token_setting_protects_the_endpoint_under_relay_serve(start_relay) -> None:
    import urllib.error
    import urllib.request

    relay = start_relay(RELAY_METRICS_TOKEN="scrape-t0ken")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(relay.url + "/metrics", timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(relay.url + "/metrics", headers={"authorization": "Bearer scrape-t0ken"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and b"relay_requests_total" in response.read()


def test_sign_in_ends_reach_metrics_under_relay_serve(start_relay, admin: Admin) -> None:
    ends_at = time.time() + 30 * 86400
    admin.add_account("max-1", "tok-max-1", kind="oauth", signin_ends_at=ends_at)
    admin.add_account("max-2", "tok-max-2", kind="oauth")  # no known end: no sample
    admin.add_account("api-1", "sk-ant-api03-x")
    relay = start_relay(RELAY_REFRESH_INTERVAL_S="1")

    def gauge() -> dict[str, float]:
        status, _, text = scrape(relay)
        assert status == 200
        return {
            dict(labels)["account"]: value
            for (name, labels), value in samples(text).items()
            if name == "relay_account_signin_end_timestamp_seconds"
        }

    deadline = time.monotonic() + 10
    while not gauge() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gauge() == {"max-1": pytest.approx(ends_at)}

    admin.update_account("max-2", lambda account: setattr(account, "signin_ends_at", ends_at + 86400))
    deadline = time.monotonic() + 10
    while len(gauge()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gauge() == {"max-1": pytest.approx(ends_at), "max-2": pytest.approx(ends_at + 86400)}
    assert "tok-max" not in scrape(relay)[2]


def test_metrics_without_a_token_are_refused_to_a_peer_beyond_this_machine() -> None:
    metrics = Metrics(RelayRuntime())
    answers = {}
    for peer in ("10.0.0.5", "127.0.0.1"):
        flow = tflow.tflow()
        flow.request.method, flow.request.path = "GET", "/metrics"
        flow.client_conn.peername = (peer, 40000)
        asyncio.run(metrics.requestheaders(flow))
        assert flow.response is not None
        answers[peer] = (flow.response.status_code, flow.response.content)
    status, body = answers["10.0.0.5"]
    assert status == 403 and b"metrics_token" in body and b"relay_requests" not in body
    assert answers["127.0.0.1"][0] == 200 and b"relay_requests" in answers["127.0.0.1"][1]
