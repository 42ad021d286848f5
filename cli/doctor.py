"""`relay status` and `relay doctor`: is this relay set up right, and if not, what to do about it.

Both exit 1 when a check FAILs (a warning does not), so scripts and health probes can use them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import click
from tabulate import tabulate

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import format_option
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.diagnostics.report import Report
from relay_core.diagnostics.report import diagnose
from relay_core.times import iso_utc

ACCOUNT_COLUMNS = ("name", "kind", "state", "token_expires", "signin_ends", "result", "detail")
RELAY_COLUMNS = ("instance", "pid", "host", "listen", "version", "started", "last_beat", "draining")


def _run(context: CliContext, active: bool) -> Report:
    return asyncio.run(diagnose(context.settings(), active=active))


def _check_rows(checks: list[Check]) -> str:
    rows = [
        [c.level.value, c.name, c.detail + (f"\n  fix: {c.fix}" if c.fix and c.level is not Level.OK else "")]
        for c in checks
    ]
    return tabulate(rows, tablefmt="plain")


def _relay_rows(report: Report) -> str:
    """The running relays (from the records they keep in the store), or a line saying there are none."""
    if not report.relays:
        return "relays: none is running against this store (no record has beaten within the last seconds)"
    rows = [
        {
            **{c: r.get(c) for c in RELAY_COLUMNS},
            "listen": ", ".join(r["listen"]),
            "started": iso_utc(r["started_at"]),
            "last_beat": f"{max(0.0, time.time() - (r['last_beat'] or 0)):.0f} s ago",
        }
        for r in report.relays
    ]
    return "running relays:\n" + tabulate(rows, headers="keys")


def _setting_rows(report: Report) -> list[tuple[str, str]]:
    """Each setting as the running relays have it; this shell's value beside it where it differs."""
    rows = []
    for name, shell in report.settings.items():
        differs = report.differences.get(name)
        if differs is None:
            rows.append((name, _shown(shell)))
            continue
        values = differs["relays"]
        if len(set(map(_shown, values.values()))) == 1:
            relay = f"{_shown(next(iter(values.values())))} (relay)"
        else:
            relay = ", ".join(f"{_shown(v)} (relay {i})" for i, v in values.items())
        rows.append((name, f"{relay} — this shell: {_shown(shell)}"))
    return rows


def _shown(value: object) -> str:
    return "" if value is None else str(value)


def _finish(report: Report) -> None:
    counts = {level: sum(c.level is level for c in report.checks) for level in Level}
    click.echo(f"\n{counts[Level.FAIL]} FAIL, {counts[Level.WARN]} warn, {counts[Level.OK]} ok")
    if report.failed:
        raise click.exceptions.Exit(1)


def _json(report: Report, **parts: object) -> None:
    click.echo(json.dumps({"ok": not report.failed, **parts}, indent=2, default=str))
    if report.failed:
        raise click.exceptions.Exit(1)


@click.command()
@format_option()
@pass_cli_context
def status(context: CliContext, fmt: str) -> None:
    """The running relays and their settings (secrets masked; this shell's where they differ), store, server
    secret, accounts and keys. Reads only."""
    report = _run(context, active=False)
    checks = [dataclasses.asdict(c) for c in report.checks]
    if fmt == "json":
        _json(
            report,
            settings=report.settings,
            relays=report.relays,
            differences=report.differences,
            checks=checks,
            accounts=report.accounts,
            keys=report.keys,
        )
        return
    click.echo(_relay_rows(report))
    click.echo()
    click.echo(tabulate(_setting_rows(report), headers=["setting", "value"]))
    click.echo()
    click.echo(_check_rows([c for c in report.checks if not c.name.startswith("account ")]))
    if report.accounts:
        click.echo()
        click.echo(tabulate([{c: r[c] for c in ACCOUNT_COLUMNS} for r in report.accounts], headers="keys"))
    _finish(report)


@click.command()
@format_option()
@pass_cli_context
def doctor(context: CliContext, fmt: str) -> None:
    """Every status check plus the network: upstreams and the OAuth token endpoint (the running relays' own
    when relays run), the listening port."""
    report = _run(context, active=True)
    if fmt == "json":
        _json(
            report,
            relays=report.relays,
            differences=report.differences,
            checks=[dataclasses.asdict(c) for c in report.checks],
        )
        return
    click.echo(_relay_rows(report))
    for name, row in _setting_rows(report):
        if name in report.differences:
            click.echo(f"  {name}: {row}")
    click.echo()
    click.echo(_check_rows(report.checks))
    _finish(report)
