"""The embedded store: exactly one server per data dir, whatever state it is in, and kept alive by the relay."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from relay_core.settings import Settings
from relay_core.store.embedded import ensure_embedded_store
from relay_core.store.embedded import server_pid
from relay_core.store.embedded import socket_path
from relay_core.store.embedded import stop_embedded_store
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: a Unix socket path has ~100 bytes
    yield path
    with contextlib.suppress(Exception):
        pid = server_pid(path)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        stop_embedded_store(path, timeout=5)
    shutil.rmtree(path, ignore_errors=True)


def valkey_servers_of(data_dir: Path) -> list[int]:
    """Every live Valkey process serving this data dir's socket (a daemonized server shows it in its title)."""
    config = f"unixsocket:{socket_path(data_dir)}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                status = (entry / "stat").read_text().split(")")[-1].split()[0]
                if config in command and status != "Z":
                    found.append(int(entry.name))
    return found


def ensure_within(data_dir: Path, seconds: float) -> str:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ensure_embedded_store, data_dir).result(timeout=seconds)


def test_a_store_that_does_not_answer_in_time_is_never_started_twice(data_dir: Path) -> None:
    url = ensure_embedded_store(data_dir)
    (pid,) = valkey_servers_of(data_dir)
    os.kill(pid, signal.SIGSTOP)  # a PING now hangs, as on a server busy for seconds
    try:
        started = time.monotonic()
        assert ensure_within(data_dir, 5) == url
        assert time.monotonic() - started < 1
        assert valkey_servers_of(data_dir) == [pid] and socket_path(data_dir).exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert redis.Redis(unix_socket_path=str(socket_path(data_dir))).ping()


def test_a_store_replaying_its_file_is_waited_for_before_the_first_command(data_dir: Path) -> None:
    """A restarted store answers LOADING while it reads its data back; the CLI's command must not see that."""
    ensure_embedded_store(data_dir)
    client = redis.Redis(unix_socket_path=str(socket_path(data_dir)))
    keys = 600_000  # several hundred ms of replay: longer than the store takes to open its socket
    client.eval("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, i) end", 0, keys)
    client.close()
    assert stop_embedded_store(data_dir)

    client = redis.Redis.from_url(ensure_embedded_store(data_dir))
    assert client.dbsize() == keys  # raised BusyLoadingError while the file was replayed
    client.close()


def test_a_store_on_a_full_disk_is_never_taken_for_a_stopped_one(data_dir: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(data_dir)], check=True)
    try:
        url = ensure_embedded_store(data_dir)
        (pid,) = valkey_servers_of(data_dir)
        client = redis.Redis(unix_socket_path=str(socket_path(data_dir)))
        client.set("before", "x")
        with open(data_dir / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        deadline = time.monotonic() + 10
        misconf = False
        while not misconf and time.monotonic() < deadline:  # the AOF write fails, then Valkey refuses
            try:
                client.set("during", "y" * 4096)
                client.ping()
                time.sleep(0.2)
            except redis.ResponseError as exc:
                misconf = "MISCONF" in str(exc)
        assert misconf, "Valkey never reported the full disk"
        assert ensure_within(data_dir, 5) == url
        assert valkey_servers_of(data_dir) == [pid]  # no second server on the same append-only file
        (data_dir / "filler").unlink()
    finally:
        for pid in valkey_servers_of(data_dir):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        subprocess.run(["umount", "-l", str(data_dir)], check=False)


def test_the_relay_restarts_a_killed_store_within_five_seconds_with_no_command_run(
    data_dir: Path, start_relay, upstream: FakeUpstream, relay_env: dict[str, str]
) -> None:
    secret = secrets.token_urlsafe(40)
    relay = start_relay(RELAY_REDIS_URL="", RELAY_DATA_DIR=str(data_dir), RELAY_SECRET_KEY=secret)
    admin = Admin(Settings(data_dir=data_dir, secret_key=secret, key_prefix=relay_env["RELAY_KEY_PREFIX"]))
    key = admin.create_key("alice")
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.reset()
    (pid,) = valkey_servers_of(data_dir)

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    status = 0
    while time.monotonic() - killed < 5 and status != 200:
        time.sleep(0.1)
        request = urllib.request.Request(
            relay.url + "/v1/messages",
            data=b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
            headers={"x-api-key": key, "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                status = response.status
        except OSError:
            status = 0
    assert status == 200, f"not served within 5 s of the store's death: {relay.log()[-2000:]}"
    (new_pid,) = valkey_servers_of(data_dir)
    assert new_pid != pid
    assert "starting it again" in relay.log()


def test_relay_store_status_and_stop(data_dir: Path) -> None:
    env = {"RELAY_DATA_DIR": str(data_dir), "RELAY_REDIS_URL": ""}
    runner = CliRunner()
    stopped = runner.invoke(main, ["store", "status", "--format", "json"], env=env)
    assert stopped.exit_code == 1 and json.loads(stopped.output)["running"] is False
    assert valkey_servers_of(data_dir) == []  # status starts nothing

    ensure_embedded_store(data_dir)
    (pid,) = valkey_servers_of(data_dir)
    running = runner.invoke(main, ["store", "status", "--format", "json"], env=env)
    assert running.exit_code == 0 and json.loads(running.output)["pid"] == pid

    assert runner.invoke(main, ["store", "stop"], env=env).output.strip() == "stopped"
    assert valkey_servers_of(data_dir) == []
    assert runner.invoke(main, ["store", "stop"], env=env).output.strip() == "not running"
    remote = runner.invoke(main, ["store", "status"], env={**env, "RELAY_REDIS_URL": "redis://127.0.0.1:1"})
    assert remote.exit_code == 1 and "not an embedded store" in remote.output
