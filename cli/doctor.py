"""`relay status` and `relay doctor`: is this relay set up right, and if not, what to do about it.

Both exit 1 when a check FAILs (a warning does not), so scripts and health probes can use them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import click
from tabulate import tabulate

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import format_option
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.diagnostics.report import Report
from relay_core.diagnostics.report import diagnose

ACCOUNT_COLUMNS = ("name", "kind", "state", "token_expires", "signin_ends", "result", "detail")


def _run(context: CliContext, active: bool) -> Report:
    return asyncio.run(diagnose(context.settings(), active=active))


def _check_rows(checks: list[Check]) -> str:
    rows = [
        [c.level.value, c.name, c.detail + (f"\n  fix: {c.fix}" if c.fix and c.level is not Level.OK else "")]
        for c in checks
    ]
    return tabulate(rows, tablefmt="plain")


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
    """Settings in force (secrets masked), store, server secret, accounts and keys. Reads only."""
    report = _run(context, active=False)
    checks = [dataclasses.asdict(c) for c in report.checks]
    if fmt == "json":
        _json(report, settings=report.settings, checks=checks, accounts=report.accounts, keys=report.keys)
        return
    click.echo(tabulate(list(report.settings.items()), headers=["setting", "value"]))
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
    """Every status check plus the network: upstreams, the OAuth token endpoint, the listening port."""
    report = _run(context, active=True)
    if fmt == "json":
        _json(report, checks=[dataclasses.asdict(c) for c in report.checks])
        return
    click.echo(_check_rows(report.checks))
    _finish(report)
