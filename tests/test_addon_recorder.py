"""The Recorder in-process: what each relayed answer leaves in the store (usage, cost, the account's health, the
session's account), for buffered and streamed answers, cut streams, and requests that never got an answer."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from mitmproxy import connection
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import taddons

from addons.failover import Failover
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from relay_core.limits import NANOS_PER_USD
from relay_core.limits import periods
from relay_core.metering import estimated_input_tokens
from relay_core.models import KeyLimits
from relay_core.runtime import Runtime
from tests.support.fake_upstream import OPUS_EXAMPLE_COST
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import sse_frames
from tests.support.response_side_flows import MODEL
from tests.support.response_side_flows import account
from tests.support.response_side_flows import error_answer
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import health_of
from tests.support.response_side_flows import json_answer
from tests.support.response_side_flows import routed_flow
from tests.support.response_side_flows import sse_headers
from tests.support.response_side_flows import state
from tests.support.response_side_flows import team_key
from tests.support.response_side_flows import usage_totals

OPUS_NANOUSD = int(Decimal(str(OPUS_EXAMPLE_COST)) * NANOS_PER_USD)


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with fresh_runtime(valkey_url, tmp_path) as rt:
        yield rt


def chain(runtime: Runtime) -> RelayChain:
    """Failover judges the answer (the account's health), the Recorder writes it: their order in the bundle."""
    shared = RelayRuntime(runtime)
    return RelayChain([shared, Failover(shared), Recorder(shared)])


def stream_through(flow: http.HTTPFlow, chunks: list[bytes]) -> bytes:
    """What the client receives: each chunk through the stream callable the Recorder installed, then the end."""
    stream = flow.response.stream  # type: ignore[union-attr]
    assert callable(stream)
    sent = b"".join(stream(chunk) for chunk in chunks)
    stream(b"")
    return sent


async def test_a_buffered_answer_records_its_tokens_and_cost_and_keeps_the_session_on_its_account(
    runtime: Runtime,
) -> None:
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    flow = routed_flow(key, served_by, session="sess-1")
    flow.response = json_answer(OPUS_EXAMPLE_USAGE)
    with taddons.context(relay):
        await relay.response(flow)
        await runtime.drain()  # the write runs in the background, off the answer's path

    totals = await usage_totals(runtime)
    assert totals["requests"] == 1 and totals["errors"] == 0 and totals["estimated"] == 0
    assert (totals["input_tokens"], totals["output_tokens"], totals["cache_read_input_tokens"]) == (1234, 321, 30000)
    assert (totals["cache_write_5m_tokens"], totals["cache_write_1h_tokens"]) == (1500, 500)
    assert totals["cost_nanousd"] == OPUS_NANOUSD
    assert state(flow).usage is not None and state(flow).usage.model == MODEL  # for the request log
    sticky = await runtime.store.redis.get(runtime.store.sticky_key(key.id, "sess-1"))
    assert sticky == served_by.id.encode()
    assert (await health_of(runtime, served_by)).last_status == 200


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
async def test_a_stream_is_metered_as_it_passes_without_changing_a_byte(runtime: Runtime, encoding: str) -> None:
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    flow = routed_flow(key, served_by)
    plain = b"".join(sse_frames(MODEL, OPUS_EXAMPLE_USAGE))
    body = {"": plain, "gzip": gzip.compress(plain), "deflate": zlib.compress(plain)}[encoding]
    chunks = [body[i : i + 37] for i in range(0, len(body), 37)]  # cut anywhere, as TCP does
    flow.response = sse_headers(encoding)
    with taddons.context(relay):
        relay.responseheaders(flow)
        assert stream_through(flow, chunks) == body
        await relay.response(flow)
        await runtime.drain()

    totals = await usage_totals(runtime)
    assert totals["requests"] == 1 and totals["partial"] == 0 and totals["estimated"] == 0
    assert (totals["input_tokens"], totals["output_tokens"], totals["cache_read_input_tokens"]) == (1234, 321, 30000)
    assert totals["cost_nanousd"] == OPUS_NANOUSD


async def test_a_stream_cut_by_the_client_keeps_what_it_showed_and_estimates_the_rest(runtime: Runtime) -> None:
    """The journal holds the stream's usage while it runs (a crash loses none); the end's record replaces it."""
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    flow = routed_flow(key, served_by)
    frames = sse_frames(MODEL, OPUS_EXAMPLE_USAGE, text="word " * 100)
    shown = frames[:-3]  # message_start and the text, not the message_delta with the final output count
    flow.response = sse_headers()
    with taddons.context(relay):
        relay.responseheaders(flow)
        stream_through(flow, shown)
        assert await runtime.journal.beat() == 0
        assert await runtime.store.redis.hlen(runtime.store.k_journal) == 1  # durable before the stream ends
        flow.error = mflow.Error("Client disconnected.")
        await relay.error(flow)
        await runtime.drain()

    totals = await usage_totals(runtime)
    assert totals["requests"] == 1 and totals["partial"] == 1 and totals["estimated"] == 1
    assert totals["input_tokens"] == 1234 and totals["cache_read_input_tokens"] == 30000
    assert totals["output_tokens"] >= len("word " * 100) // 4  # estimated from the text the client saw
    assert await runtime.store.redis.hlen(runtime.store.k_journal) == 0  # counted once, not again after a crash
    assert (await health_of(runtime, served_by)).fail_streak == 0  # the client left: not the account's fault


async def test_an_upstream_that_died_before_answering_costs_an_input_estimate_and_counts_against_the_account(
    runtime: Runtime,
) -> None:
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    flow = routed_flow(key, served_by)
    flow.error = mflow.Error("Server disconnected.")
    with taddons.context(relay):
        await relay.error(flow)
        await runtime.drain()

    totals = await usage_totals(runtime)
    assert totals["requests"] == 1 and totals["errors"] == 1 and totals["estimated"] == 1
    assert totals["input_tokens"] == estimated_input_tokens(len(flow.request.raw_content or b""))
    health = await health_of(runtime, served_by)
    assert (health.last_status, health.fail_streak) == (502, 1)


async def test_a_client_gone_before_the_request_went_upstream_costs_nothing(runtime: Runtime) -> None:
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    flow = routed_flow(key, served_by)
    flow.server_conn = connection.Server(address=("api.anthropic.com", 443))  # never opened
    flow.error = mflow.Error("Client disconnected.")
    with taddons.context(relay):
        await relay.error(flow)
        await runtime.drain()

    assert await usage_totals(runtime) == {}
    assert (await health_of(runtime, served_by)).last_status is None


async def test_three_upstream_errors_in_a_row_cool_the_account_and_are_not_billed(runtime: Runtime) -> None:
    relay = chain(runtime)
    key, served_by = team_key(), account(runtime)
    with taddons.context(relay):
        for _ in range(3):
            flow = routed_flow(key, served_by)
            flow.response = error_answer(500, "api_error", "Internal server error")
            await relay.response(flow)
            assert flow.response.status_code == 500  # the client sees the upstream's error as it was
        await runtime.drain()

    totals = await usage_totals(runtime)
    assert totals["requests"] == 3 and totals["errors"] == 3
    assert totals["input_tokens"] == 0 and totals["cost_nanousd"] == 0
    health = await health_of(runtime, served_by)
    assert health.cooling_until("opus", time.time()) is not None
    assert health.fail_streak == 0  # the streak turned into the cooldown


async def test_a_key_with_a_budget_is_charged_before_its_answer_ends(runtime: Runtime) -> None:
    """No background write for budgets: the key's next request must already see this one's cost."""
    relay = chain(runtime)
    key, served_by = team_key(limits=KeyLimits(budgets_nanousd={"day": 10 * NANOS_PER_USD})), account(runtime)
    flow = routed_flow(key, served_by)
    flow.response = json_answer(OPUS_EXAMPLE_USAGE)
    with taddons.context(relay):
        await relay.response(flow)
        spent = await runtime.store.key_consumption(key, periods(time.time(), runtime.store.zone))
    assert spent["spend_nanousd"]["day"] == OPUS_NANOUSD
