"""The admin CLI on the embedded Valkey, as `make run` uses it: no Redis URL, one data directory."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from relay_core.store.embedded import ensure_embedded_store
from relay_core.store.embedded import is_running
from relay_core.store.embedded import socket_path
from relay_core.store.embedded import stop_embedded_store
from tests.support.relay_process import RelayProcess


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli")
    for name in ("RELAY_REDIS_URL", "RELAY_SECRET_KEY", "RELAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RELAY_DATA_DIR", str(path))
    yield path
    stop_embedded_store(path)


def relay(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def raw_store_dump(data_dir: Path) -> bytes:
    ensure_embedded_store(data_dir)  # each command stops the store it started
    client = redis.Redis(unix_socket_path=str(socket_path(data_dir)))
    dump = b""
    for name in client.keys("*"):
        dump += name + repr(client.dump(name)).encode()
        kind = client.type(name)
        if kind == b"hash":
            dump += b"".join(k + v for k, v in client.hgetall(name).items())
    client.close()
    return dump


def test_keys_lifecycle_shows_the_secret_once(data_dir: Path) -> None:
    created = json.loads(relay("keys", "create", "alice", "--note", "Alice A.", "--format", "json"))
    secret = created["key"]
    assert secret.startswith("rk-") and len(secret) > 40
    assert (data_dir / "secret.key").stat().st_mode & 0o777 == 0o600

    listed = relay("keys", "list") + relay("keys", "list", "--format", "json") + relay("keys", "show", "alice")
    assert "alice" in listed and secret not in listed
    assert json.loads(relay("keys", "show", "alice", "--format", "json"))["enabled"] is True

    relay("keys", "disable", "alice")
    assert json.loads(relay("keys", "show", "alice", "--format", "json"))["enabled"] is False
    relay("keys", "enable", "alice")

    rotated = json.loads(relay("keys", "rotate", "alice", "--format", "json"))["key"]
    assert rotated != secret
    assert secret.encode() not in raw_store_dump(data_dir)
    assert rotated.encode() not in raw_store_dump(data_dir)

    duplicate = CliRunner().invoke(main, ["keys", "create", "alice"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output

    relay("keys", "delete", "alice", "--yes")
    assert json.loads(relay("keys", "list", "--format", "json")) == []
    missing = CliRunner().invoke(main, ["keys", "show", "alice"])
    assert missing.exit_code != 0 and "no team key named 'alice'" in missing.output


def test_accounts_never_print_or_store_their_secrets_in_clear(data_dir: Path) -> None:
    api_key, access, refresh = "sk-ant-api03-SECRETKEY", "sk-ant-oat01-SECRETACCESS", "sk-ant-ort01-SECRETREFRESH"
    out = relay("accounts", "add-console", "console-1", "--api-key", api_key, "--priority", "60")
    out += relay(
        "accounts",
        "add-token",
        "max-1",
        "--access-token",
        access,
        "--refresh-token",
        refresh,
        "--expires-in",
        "3600",
        "--format",
        "json",
    )
    out += relay("accounts", "list") + relay("accounts", "show", "max-1")
    rows = json.loads(relay("accounts", "list", "--format", "json"))
    assert [(r["name"], r["kind"], r["state"], r["priority"]) for r in rows] == [
        ("console-1", "console", "active", 60),
        ("max-1", "oauth", "active", 50),
    ]
    assert rows[1]["refreshable"] is True and rows[1]["expires_at"]
    store = raw_store_dump(data_dir)
    for secret in (api_key, access, refresh):
        assert secret not in out
        assert secret.encode() not in store

    relay("accounts", "disable", "max-1")
    assert json.loads(relay("accounts", "show", "max-1", "--format", "json"))["state"] == "disabled"
    relay("accounts", "delete", "max-1", "--yes")
    assert [r["name"] for r in json.loads(relay("accounts", "list", "--format", "json"))] == ["console-1"]

    bad = CliRunner().invoke(main, ["accounts", "add-console", "x", "--api-key", "k", "--base-url", "ftp://nope"])
    assert bad.exit_code != 0 and "http(s)" in bad.output


def test_embedded_store_persists_across_restarts(data_dir: Path) -> None:
    relay("keys", "create", "persisted")
    assert not is_running(data_dir)  # the command stopped the store it started
    ensure_embedded_store(data_dir)
    assert stop_embedded_store(data_dir)
    assert not socket_path(data_dir).exists() or not stop_embedded_store(data_dir)
    assert [k["name"] for k in json.loads(relay("keys", "list", "--format", "json"))] == ["persisted"]


def test_changed_secret_is_refused_clearly(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay("keys", "create", "k1")
    monkeypatch.setenv("RELAY_SECRET_KEY", "another-secret-that-is-long-enough-0123456789")
    result = CliRunner().invoke(main, ["keys", "list"])
    assert result.exit_code != 0
    assert "does not match" in result.output


def test_usage_report_formats_on_an_empty_store(data_dir: Path) -> None:
    assert json.loads(relay("usage", "--by", "model", "--format", "json")) == []
    assert relay("usage", "--format", "csv") == ""
    assert "(none)" in relay("usage")


def test_serve_on_embedded_store_answers_health(data_dir: Path) -> None:
    process = RelayProcess({"RELAY_DATA_DIR": str(data_dir)}).start()
    try:
        with urllib.request.urlopen(process.url + "/health", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok", "store": "ok"}
        relay("keys", "create", "while-running")  # the CLI shares the relay's embedded store
        assert "while-running" in relay("keys", "list")
    finally:
        process.stop()


def test_update_commands_change_limits_and_queue(data_dir: Path) -> None:
    key = json.loads(relay("keys", "create", "team", "--concurrency", "3", "--format", "json"))
    assert key["concurrency"] == 3
    assert json.loads(relay("keys", "update", "team", "--concurrency", "0", "--note", "n", "--format", "json")) == {
        **{k: v for k, v in key.items() if k != "key"},
        "key": key["key"][:7] + "…",
        "concurrency": None,
        "note": "n",
    }
    relay("accounts", "add-console", "c1", "--api-key", "sk-ant-api03-x")
    updated = json.loads(relay("accounts", "update", "c1", "--queue", "on", "--priority", "70", "--format", "json"))
    assert (updated["user_message_queue"], updated["priority"]) == ("on", 70)
    assert (
        json.loads(relay("accounts", "update", "c1", "--queue", "default", "--format", "json"))["user_message_queue"]
        == "default"
    )


def test_account_flags_for_extra_usage_and_other_clients(data_dir: Path) -> None:
    relay("accounts", "add-token", "max-1", "--access-token", "sk-ant-oat01-FLAGS", "--expires-in", "3600")
    shown = json.loads(relay("accounts", "show", "max-1", "--format", "json"))
    assert (shown["allow_extra_usage"], shown["allow_other_clients"], shown["signin_ends_at"]) == (False, False, None)

    both = json.loads(
        relay("accounts", "update", "max-1", "--allow-extra-usage", "--allow-other-clients", "--format", "json")
    )
    assert (both["allow_extra_usage"], both["allow_other_clients"]) == (True, True)
    one_off = json.loads(relay("accounts", "update", "max-1", "--no-allow-extra-usage", "--format", "json"))
    assert (one_off["allow_extra_usage"], one_off["allow_other_clients"]) == (False, True)  # the other flag stays
    relay("accounts", "update", "max-1", "--no-allow-other-clients", "--priority", "70")
    table = relay("accounts", "show", "max-1")
    assert "allow extra usage" in table and "allow other clients" in table
    final = json.loads(relay("accounts", "show", "max-1", "--format", "json"))
    assert (final["allow_extra_usage"], final["allow_other_clients"], final["priority"]) == (False, False, 70)

    help_text = " ".join(relay("accounts", "update", "--help").split())  # click wraps it
    assert "billed to the subscription's owner" in help_text and "2026-04" in help_text

    relay("accounts", "add-console", "c1", "--api-key", "sk-ant-api03-x")
    refused = CliRunner().invoke(main, ["accounts", "update", "c1", "--allow-other-clients", "--priority", "9"])
    assert refused.exit_code == 2 and "subscription (OAuth) accounts" in refused.output
    unchanged = json.loads(relay("accounts", "show", "c1", "--format", "json"))
    assert (unchanged["allow_other_clients"], unchanged["priority"]) == (False, 50)


def test_account_caps_are_set_shown_and_removed(data_dir: Path) -> None:
    added = json.loads(
        relay(
            "accounts", "add-console", "c1", "--api-key", "sk-ant-api03-x", "--max-concurrency", "2", "--format", "json"
        )
    )
    assert (added["max_concurrency"], added["rpm"]) == (2, None)
    updated = json.loads(relay("accounts", "update", "c1", "--rpm", "30", "--format", "json"))
    assert (updated["max_concurrency"], updated["rpm"]) == (2, 30)  # the other cap stays
    listed = relay("accounts", "list", "--wide")
    assert "max_conc" in listed and "rpm" in listed
    assert "max concurrency" in relay("accounts", "show", "c1")
    cleared = json.loads(relay("accounts", "update", "c1", "--max-concurrency", "0", "--rpm", "0", "--format", "json"))
    assert (cleared["max_concurrency"], cleared["rpm"]) == (None, None)
    token = json.loads(
        relay("accounts", "add-token", "max-1", "--access-token", "sk-ant-oat01-CAPS", "--rpm", "5", "--format", "json")
    )
    assert (token["max_concurrency"], token["rpm"]) == (None, 5)
    refused = CliRunner().invoke(main, ["accounts", "update", "c1", "--max-concurrency", "-1"])
    assert refused.exit_code == 2


def test_base_url_and_proxy_credentials_are_masked_in_every_view(data_dir: Path) -> None:
    relay(
        "accounts",
        "add-console",
        "gateway",
        "--api-key",
        "sk-ant-api03-k",
        "--base-url",
        "https://relay-user:BASEPASS@gw.example/anthropic?api_key=QUERYSECRET",
        "--proxy",
        "http://proxy-user:PROXYPASS@127.0.0.1:3128",
    )
    out = relay("accounts", "list") + relay("accounts", "show", "gateway")
    shown = json.loads(relay("accounts", "show", "gateway", "--format", "json"))
    out += json.dumps(shown)
    for secret in ("BASEPASS", "QUERYSECRET", "PROXYPASS"):
        assert secret not in out
    assert shown["base_url"].startswith("https://***@gw.example/anthropic")
    assert shown["proxy"] == "http://***@127.0.0.1:3128"
    at_rest = raw_store_dump(data_dir)
    assert b"127.0.0.1:3128" in at_rest
    for secret in (b"BASEPASS", b"PROXYPASS", b"relay-user", b"proxy-user"):  # sealed at rest
        assert secret not in at_rest
