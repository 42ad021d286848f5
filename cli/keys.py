"""`relay keys`: team keys. The secret is shown once, at creation or rotation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_lines
from cli.output import emit_table
from cli.output import format_option
from cli.tables import Clock
from cli.tables import Row
from cli.tables import key_columns
from cli.tables import key_lines
from cli.tables import render
from cli.tables import table_options
from cli.tables import usage_columns
from cli.tables import usage_totals
from cli.tables import with_account_names
from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.admin.views import key_view
from relay_core.models import LimitWindow
from relay_core.models import TeamKey


def _window(text: str) -> LimitWindow:
    try:
        seconds, requests, *tokens = text.split(":")
        return LimitWindow(
            seconds=int(seconds),
            requests=int(requests) if requests else None,
            tokens=int(tokens[0]) if tokens and tokens[0] else None,
        )
    except (ValueError, IndexError) as exc:
        raise click.BadParameter(f"{text!r}: use SECONDS:REQUESTS[:TOKENS], e.g. 3600:100 or 60::200000") from exc


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


BUDGET_OPTIONS = {"daily_budget": "day", "weekly_budget": "week", "monthly_budget": "month", "total_budget": "total"}


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `create` and `update` share. In `update`, 0 or '' removes a limit."""
    options = [
        click.option("--concurrency", type=click.IntRange(min=0), default=None, help="most requests in flight"),
        click.option("--rpm", type=click.IntRange(min=0), default=None, help="requests per minute"),
        click.option("--tpm", type=click.IntRange(min=0), default=None, help="tokens (all input + output) per minute"),
        click.option(
            "--window", "windows", multiple=True, help="SECONDS:REQUESTS[:TOKENS], e.g. 18000:200 (repeatable)"
        ),
        *[
            click.option(
                f"--{period}-budget",
                f"{period}_budget",
                type=click.FloatRange(min=0),
                default=None,
                help=f"USD per {period}" if period != "total" else "USD in all",
            )
            for period in ("daily", "weekly", "monthly", "total")
        ],
        click.option(
            "--allow-models", default=None, help="comma-separated globs, e.g. 'claude-sonnet-*,claude-haiku-*'"
        ),
        click.option("--deny-models", default=None, help="comma-separated globs, e.g. 'claude-opus-*'"),
        click.option("--claude-code-only/--any-client", default=None, help="accept only Claude Code's requests"),
        click.option(
            "--allow-other-clients/--no-allow-other-clients",
            default=None,
            help="let clients that are not Claude Code use subscription accounts (Anthropic bills them to the "
            "subscription's extra usage or refuses them); by default they go to API-key accounts only",
        ),
        click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None, help="last day (UTC) it works"),
        click.option("--expires-after-days", type=click.IntRange(min=0), default=None, help="days after first use"),
        click.option("--account", "account_name", default=None, help="bind to one account"),
        click.option("--group", default=None, help="bind to the accounts of a group"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def key_changes(options: dict[str, Any], note: str | None = None) -> KeyChanges:
    """The limit options as the service's KeyChanges (parsing only: the service applies them)."""
    return KeyChanges(
        note=note,
        concurrency=options["concurrency"],
        rpm=options["rpm"],
        tpm=options["tpm"],
        windows=tuple(_window(text) for text in options["windows"]),
        budgets_usd={period: options[o] for o, period in BUDGET_OPTIONS.items() if options[o] is not None},
        models_allow=_patterns(options["allow_models"]) if options["allow_models"] is not None else None,
        models_deny=_patterns(options["deny_models"]) if options["deny_models"] is not None else None,
        claude_code_only=options["claude_code_only"],
        allow_other_clients=options["allow_other_clients"],
        last_day=options["expires"].date() if options["expires"] is not None else None,
        expires_after_days=options["expires_after_days"],
        account=options["account_name"],
        group=options["group"],
    )


@dataclass(frozen=True)
class ShownKey:
    """A key as its commands print it: its view (JSON), the same with its account named (tables), the clock."""

    view: Row
    named: Row
    clock: Clock


async def shown_keys(admin: AdminService, keys: list[TeamKey]) -> list[ShownKey]:
    account_names = {account.id: account.name for account in await admin.accounts.list_accounts()}
    clock = Clock.local(admin.runtime.store.zone)
    return [ShownKey(key_view(k), with_account_names(key_view(k), account_names), clock) for k in keys]


def _emit_key(shown: ShownKey, fmt: str, secret: str | None = None) -> None:
    if fmt == "json":
        emit_lines({**shown.view, "key": secret} if secret else shown.view, fmt, [])
        return
    emit_lines(shown.view, fmt, key_lines(shown.named, shown.clock))
    if secret:
        click.echo(f"\nkey: {secret}\nThis is the only time the key is shown; give it to its owner now.")


@click.group()
def keys() -> None:
    """Team keys: one per person."""


@keys.command()
@click.argument("name")
@click.option("--note", default="", help="free text, e.g. the owner")
@limit_options
@format_option()
@pass_cli_context
def create(context: CliContext, name: str, note: str, fmt: str, **options: Any) -> None:
    """Create a key and print its secret once."""
    changes = key_changes(options, note)

    async def op(admin: AdminService) -> tuple[str, ShownKey]:
        issued = await admin.keys.create(name, changes)
        return issued.secret, (await shown_keys(admin, [issued.key]))[0]

    secret, shown = context.run(op)
    _emit_key(shown, fmt, secret)


@keys.command("list")
@format_option()
@table_options
@pass_cli_context
def list_keys(context: CliContext, fmt: str, sort: str | None, wide: bool) -> None:
    """All keys (never their secrets)."""

    async def op(admin: AdminService) -> list[ShownKey]:
        return await shown_keys(admin, await admin.keys.list_keys())

    shown = context.run(op)
    rows = [s.named if fmt == "table" else s.view for s in shown]
    clock = shown[0].clock if shown else Clock.local("UTC")
    emit_table(rows, fmt, key_columns(clock), sort or "name", wide)


@keys.command()
@click.argument("name")
@format_option()
@pass_cli_context
def show(context: CliContext, name: str, fmt: str) -> None:
    """One key: its limits next to what it has used of them."""

    async def op(admin: AdminService) -> tuple[ShownKey, Row]:
        key = await admin.keys.get(name)
        return (await shown_keys(admin, [key]))[0], await admin.keys.report(key)

    shown, report = context.run(op)
    emit_lines({**shown.view, **report}, fmt, key_lines(shown.named, shown.clock, report))
    if fmt == "table" and report["daily"]:
        daily = report["daily"]
        click.echo(f"\nLast days:\n{render(daily, usage_columns('day'), totals=usage_totals(daily, 'day'))}")


@keys.command()
@click.argument("name")
@click.option("--note", default=None, help="free text, e.g. the owner")
@limit_options
@format_option()
@pass_cli_context
def update(context: CliContext, name: str, note: str | None, fmt: str, **options: Any) -> None:
    """Change a key's note, limits or binding (0 or '' removes a limit)."""
    changes = key_changes(options, note)

    async def op(admin: AdminService) -> ShownKey:
        return (await shown_keys(admin, [await admin.keys.update(name, changes)]))[0]

    _emit_key(context.run(op), fmt)


def _set_enabled(context: CliContext, name: str, enabled: bool) -> None:
    context.run(lambda admin: admin.keys.set_enabled(name, enabled))
    click.echo(f"key {name} {'enabled' if enabled else 'disabled'}")


@keys.command()
@click.argument("name")
@pass_cli_context
def enable(context: CliContext, name: str) -> None:
    """Let the key be used again."""
    _set_enabled(context, name, True)


@keys.command()
@click.argument("name")
@pass_cli_context
def disable(context: CliContext, name: str) -> None:
    """Refuse the key (401) until enabled again."""
    _set_enabled(context, name, False)


@keys.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_cli_context
def delete(context: CliContext, name: str, yes: bool) -> None:
    """Delete the key for good (its usage history stays)."""
    if not yes:
        click.confirm(f"Delete key {name}?", abort=True)
    context.run(lambda admin: admin.keys.delete(name))
    click.echo(f"key {name} deleted")


@keys.command()
@click.argument("name")
@format_option()
@pass_cli_context
def rotate(context: CliContext, name: str, fmt: str) -> None:
    """Replace the key's secret; the old one stops working at once."""

    async def op(admin: AdminService) -> tuple[str, ShownKey]:
        issued = await admin.keys.rotate(name)
        return issued.secret, (await shown_keys(admin, [issued.key]))[0]

    secret, shown = context.run(op)
    _emit_key(shown, fmt, secret)
