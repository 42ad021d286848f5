"""ConnectionCap in-process: one client address cannot hold more than `max_connections_per_client` connections."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from mitmproxy import connection
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.connection_cap import ConnectionCap
from addons.relay_runtime import RelayRuntime
from relay_core.settings import Settings
from tests.support.request_side_flows import own_runtime


@asynccontextmanager
async def capped(settings: Settings, cap: int) -> AsyncIterator[ConnectionCap]:
    async with own_runtime(settings, max_connections_per_client=cap) as runtime:
        addon = ConnectionCap(RelayRuntime(runtime))
        with taddons.context(addon):
            yield addon


def connect(addon: ConnectionCap, host: str) -> connection.Client:
    client = tflow.tclient_conn()
    client.peername = (host, 50000)
    addon.client_connected(client)
    return client


async def test_connections_beyond_the_cap_are_refused_per_address(settings: Settings) -> None:
    async with capped(settings, 2) as addon:
        admitted = [connect(addon, "10.0.0.5") for _ in range(2)]
        refused = connect(addon, "10.0.0.5")
        other = connect(addon, "10.0.0.6")
    assert [c.error for c in admitted] == [None, None]
    assert refused.error == "more than 2 connections from 10.0.0.5 (max_connections_per_client)"
    assert other.error is None  # another client is not held back by the first one's connections


async def test_a_closed_connection_frees_its_place_but_a_refused_one_had_none(settings: Settings) -> None:
    async with capped(settings, 2) as addon:
        first, _second = connect(addon, "10.0.0.5"), connect(addon, "10.0.0.5")
        refused = connect(addon, "10.0.0.5")
        addon.client_disconnected(refused)  # was never counted: closing it frees nothing
        assert connect(addon, "10.0.0.5").error is not None
        addon.client_disconnected(first)
        assert connect(addon, "10.0.0.5").error is None


async def test_a_cap_of_zero_means_no_cap(settings: Settings) -> None:
    async with capped(settings, 0) as addon:
        clients = [connect(addon, "10.0.0.5") for _ in range(500)]
    assert all(client.error is None for client in clients)


async def test_one_warning_per_address_until_its_count_falls(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def warnings() -> int:
        return sum("refusing connections from 10.0.0.5" in r.getMessage() for r in caplog.records)

    async with capped(settings, 1) as addon:
        with caplog.at_level(logging.WARNING, logger="addons.connection_cap"):
            held = connect(addon, "10.0.0.5")
            for _ in range(20):
                connect(addon, "10.0.0.5")
            assert warnings() == 1  # a flood of refusals does not flood the log
            addon.client_disconnected(held)
            connect(addon, "10.0.0.5")
            connect(addon, "10.0.0.5")
            assert warnings() == 2


async def test_connections_already_failed_or_without_a_peer_are_not_counted(settings: Settings) -> None:
    async with capped(settings, 1) as addon:
        failed = tflow.tclient_conn()
        failed.error = "TLS handshake failed"
        addon.client_connected(failed)
        anonymous = tflow.tclient_conn()
        anonymous.peername = None  # type: ignore[assignment]
        addon.client_connected(anonymous)
        assert anonymous.error is None
        assert connect(addon, "127.0.0.1").error is None  # tflow's clients come from 127.0.0.1: none counted
