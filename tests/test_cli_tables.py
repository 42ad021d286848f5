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

from relay_core.admin.service import AdminService
from relay_core.runtime import Runtime
from relay_core.settings import Settings
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
