"""The CLI's tables on a realistic team (tests/support/cli_dataset.py): readable, at most 120 columns, no
Python structures; `--format json|csv` as before (tests/data/cli_formats.json)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from relay_core.admin.service import AdminService
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.store.names import KeyNames
from tests.support.admin import Admin
from tests.support.cli_dataset import USAGE_DAYS
from tests.support.cli_dataset import build_team

GOLDEN = Path(__file__).parent / "data" / "cli_formats.json"
SINCE_UNTIL = ("--since", USAGE_DAYS[0], "--until", USAGE_DAYS[1])
# What differs between runs: ids, secrets' hints, times taken from the clock.
VOLATILE = re.compile(r"^([0-9a-f]{12}|rk-.*|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00)$")
FORMAT_COMMANDS = [
    ("keys", "list", "--format", "json"),
    ("keys", "show", "alice", "--format", "json"),
    ("keys", "show", "carol-never-used", "--format", "json"),
    ("accounts", "list", "--format", "json"),
    ("accounts", "show", "max-team-a-primary", "--format", "json"),
    *[("usage", "--by", by, *SINCE_UNTIL, "--format", "json") for by in ("key", "account", "model", "day", "hour")],
    *[("usage", "--by", by, *SINCE_UNTIL, "--format", "csv") for by in ("key", "model")],
]


@pytest.fixture
def team(admin: Admin, settings: Settings) -> None:
    async def build() -> None:
        runtime = Runtime(settings)
        try:
            await build_team(AdminService(runtime))
        finally:
            await runtime.store.close()

    asyncio.run(build())


def normalized(value: Any) -> Any:
    """JSON output with the values that differ between runs replaced by '*'."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return "*" if isinstance(value, str) and VOLATILE.match(value) else value


def format_outputs(cli: Callable[..., str]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for command in FORMAT_COMMANDS:
        text = cli(*command)
        outputs[" ".join(command)] = normalized(json.loads(text)) if "json" in command else text
    return outputs


def test_json_and_csv_are_unchanged(team: None, cli: Callable[..., str]) -> None:
    outputs = format_outputs(cli)
    if not GOLDEN.exists():  # written once, before the tables changed
        GOLDEN.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
    assert outputs == json.loads(GOLDEN.read_text())


TABLE_COMMANDS = [
    ("keys", "list"),
    ("keys", "show", "alice"),
    ("keys", "show", "bob"),
    ("keys", "show", "carol-never-used"),
    ("accounts", "list"),
    ("accounts", "show", "max-team-a-primary"),
    *[("usage", "--by", by, *SINCE_UNTIL) for by in ("key", "account", "model", "day", "hour", "month")],
]


def test_tables_fit_120_columns_and_print_no_python_structures(team: None, cli: Callable[..., str]) -> None:
    for command in TABLE_COMMANDS:
        out = cli(*command)
        print(f"$ relay {' '.join(command)}\n{out}")
        assert max(len(line) for line in out.splitlines()) <= 120, command
        assert "{" not in out and "[" not in out and "None" not in out, command


def store_dump(valkey_url: str, settings: Settings) -> dict[bytes, Any]:
    """Every key the CLI could write, as DUMP bytes. A relay still running from another test (the session's
    `relay`) beats under the same prefix every second; its presence keys are its writes, not the CLI's."""
    names = KeyNames(settings.key_prefix)
    heartbeat = {names.k_instances.encode(), names.k_relays.encode()}
    client = redis.Redis.from_url(valkey_url)
    try:
        return {name: client.dump(name) for name in client.scan_iter(match=names.tag + "*") if name not in heartbeat}
    finally:
        client.close()


INVALID = [
    ("keys", "create", ""),
    ("keys", "create", "two words"),
    ("keys", "create", "new\nline"),
    ("keys", "create", "bell\x07"),
    ("keys", "create", "k", "--group", "nosuchgroup"),
    ("keys", "create", "k", "--account", "api-overflow", "--group", "team-a"),
    ("keys", "create", "k", "--account", "nosuchaccount"),
    ("keys", "create", "k", "--expires", "2020-01-01"),
    ("keys", "update", "bob", "--group", "team-a"),  # bob is bound to an account
    ("keys", "update", "alice", "--group", "nosuchgroup"),
    ("accounts", "add-console", "with space", "--api-key", "sk-ant-api03-X"),
    ("accounts", "add-console", "c", "--api-key", "sk-ant-oat01-X"),
    ("accounts", "add-token", "t", "--access-token", "sk-ant-api03-X"),
    ("accounts", "update", "max-2", "--groups", "ok,bad group"),
]


@pytest.mark.parametrize("command", INVALID, ids=lambda c: " ".join(c).replace("\n", "\\n"))
def test_invalid_input_is_one_line_exit_2_and_writes_nothing(
    team: None, cli: Callable[..., str], valkey_url: str, settings: Settings, command: tuple[str, ...]
) -> None:
    before = store_dump(valkey_url, settings)
    result = CliRunner().invoke(main, list(command))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: "), result.output
    assert store_dump(valkey_url, settings) == before


def test_a_bad_setting_is_one_line_exit_2(cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_WARNING_UTILIZATION", "1.5")
    result = CliRunner().invoke(main, ["keys", "list"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "warning_utilization" in result.output


def test_secrets_from_stdin_and_prompt_never_echo(
    admin: Admin, cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api_key, access = "sk-ant-api03-STDIN", "sk-ant-oat01-PROMPTED"
    out = CliRunner().invoke(main, ["accounts", "add-console", "c1", "--api-key", "-"], input=api_key + "\n").output
    both = CliRunner().invoke(main, ["accounts", "add-token", "t1", "--access-token", "-", "--refresh-token", "-"])
    assert both.exit_code == 2 and "only one secret" in both.output
    monkeypatch.setattr("cli.secret_input.on_terminal", lambda: True)
    asked = CliRunner().invoke(main, ["accounts", "add-token", "t1"], input=access + "\n")
    assert asked.exit_code == 0, asked.output
    out += asked.output
    for secret in (api_key, access):
        assert secret not in out
    rows = {r["name"]: r for r in json.loads(cli("accounts", "list", "--format", "json"))}
    assert (rows["c1"]["kind"], rows["t1"]["kind"]) == ("console", "oauth")
    assert "OAuth access token" in asked.output  # the prompt, hidden: the token is not echoed
    monkeypatch.setattr("cli.secret_input.on_terminal", lambda: False)
    no_tty = CliRunner().invoke(main, ["accounts", "add-console", "c2"])
    assert no_tty.exit_code == 2 and "--api-key -" in no_tty.output


def test_sort_totals_and_idle_keys(team: None, cli: Callable[..., str]) -> None:
    by_key = cli("usage", "--by", "key", *SINCE_UNTIL).splitlines()
    names = [line.split()[0] for line in by_key[2:] if not line.startswith("-")]
    assert names == ["alice", "bob", "carol-never-used", "dave", "total"]  # most expensive first, idle ones listed
    assert by_key[-1].split()[:3] == ["total", "4", "0"] and "$2.00" in by_key[-1]
    assert json.loads(cli("usage", "--by", "key", *SINCE_UNTIL, "--format", "json"))[-1]["key"] == "bob"
    by_input = cli("usage", "--by", "model", *SINCE_UNTIL, "--sort", "-input").splitlines()
    assert [line.split()[0] for line in by_input[2:6]] == [
        "claude-unknown-x",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
    ]
    accounts = cli("accounts", "list", "--sort", "5h").splitlines()
    assert [line.split()[0] for line in accounts[2:]] == ["max-team-a-primary", "max-2", "api-overflow"]
    assert "max_conc" in cli("accounts", "list", "--wide")
    unknown = CliRunner().invoke(main, ["keys", "list", "--sort", "nosuch"])
    assert unknown.exit_code == 2 and "columns: name, state" in unknown.output
