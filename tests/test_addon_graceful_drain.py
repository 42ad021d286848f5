"""The graceful drain in-process: on SIGTERM the relay stops listening, lets running requests finish (their usage
recorded) and then exits; the drain timeout bounds the wait, and a second signal exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mitmproxy import flow as mflow
from mitmproxy.test import taddons

from addons.graceful_drain import GracefulDrain
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from relay_core.runtime import Runtime
from tests.support.response_side_flows import account
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import json_answer
from tests.support.response_side_flows import routed_flow
from tests.support.response_side_flows import team_key
from tests.support.response_side_flows import usage_totals

SETTLE_S = 0.05  # a few turns of the event loop, far below any drain timeout


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Runtime]:
    async with fresh_runtime(valkey_url, tmp_path, drain_timeout_s=getattr(request, "param", 120)) as rt:
        yield rt


def chain(runtime: Runtime) -> tuple[RelayChain, GracefulDrain]:
    """The Recorder, then the drain: a flow counts as finished once its usage is recorded (the bundle's order)."""
    shared = RelayRuntime(runtime)
    drain = GracefulDrain(shared)
    return RelayChain([shared, Recorder(shared), drain]), drain


async def exited(tctx: taddons.context, within: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(tctx.master.should_exit.wait(), within)
    except TimeoutError:
        return False
    return True


async def test_sigterm_stops_listening_and_exits_once_running_requests_finished_and_were_recorded(
    runtime: Runtime,
) -> None:
    relay, drain = chain(runtime)
    key, served_by = team_key(), account(runtime)
    answered, failed = routed_flow(key, served_by), routed_flow(key, served_by)
    with taddons.context(relay) as tctx:
        for flow in (answered, failed):
            relay.requestheaders(flow)
        drain.begin_drain()
        await asyncio.sleep(SETTLE_S)
        assert runtime.draining  # new requests on kept-alive connections are refused (ServiceEndpoints)
        assert tctx.options.server is False  # the listening socket is closed
        assert not tctx.master.should_exit.is_set()

        answered.response = json_answer()
        await relay.response(answered)
        assert not await exited(tctx, within=SETTLE_S)  # one request still runs

        failed.error = mflow.Error("Server disconnected.")
        await relay.error(failed)
        assert await exited(tctx)
        assert (await usage_totals(runtime))["requests"] == 2  # both written before the process exits


@pytest.mark.parametrize("runtime", [0], indirect=True)
async def test_the_drain_timeout_bounds_the_wait(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    relay, drain = chain(runtime)
    stuck = routed_flow(team_key(), account(runtime))
    with taddons.context(relay) as tctx:
        relay.requestheaders(stuck)
        drain.begin_drain()
        assert await exited(tctx)
    assert "drain timeout: exiting with 1 requests still running" in caplog.text


async def test_a_second_signal_exits_at_once(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    relay, drain = chain(runtime)
    running = routed_flow(team_key(), account(runtime))
    with taddons.context(relay) as tctx:
        relay.requestheaders(running)
        drain.begin_drain()
        assert not await exited(tctx, within=SETTLE_S)
        drain.begin_drain()
        assert await exited(tctx, within=SETTLE_S * 4)
        assert "second shutdown signal: exiting without waiting for 1 requests" in caplog.text
        running.response = json_answer()
        await relay.response(running)  # lets the first drain end too, so no task outlives the test
        await asyncio.sleep(SETTLE_S)


async def test_an_idle_relay_exits_on_a_real_sigterm(runtime: Runtime) -> None:
    relay, drain = chain(runtime)
    loop = asyncio.get_running_loop()
    with taddons.context(relay) as tctx:
        drain.running()  # its own hook only: the chain's `running` also starts the runtime's background work
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await exited(tctx)
            assert runtime.draining
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


async def test_requests_that_already_finished_do_not_hold_the_exit(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A request answered before the signal is done with: the drain waits for nothing and logs 0 running."""
    caplog.set_level(logging.INFO, logger="addons.graceful_drain")
    relay, drain = chain(runtime)
    done = routed_flow(team_key(), account(runtime))
    with taddons.context(relay) as tctx:
        relay.requestheaders(done)
        done.response = json_answer()
        await relay.response(done)
        drain.begin_drain()
        assert await exited(tctx)
    assert "waiting up to 120s for 0 running requests" in caplog.text
