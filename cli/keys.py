"""`relay keys`: team keys. The secret is shown once, at creation or rotation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import click

from cli.context import run
from cli.output import emit_record
from cli.output import emit_rows
from cli.output import format_option
from relay_core.limits import NANOS_PER_USD
from relay_core.models import LimitWindow
from relay_core.models import TeamKey
from relay_core.reports import key_report
from relay_core.reports import limits_view
from relay_core.runtime import Runtime
from relay_core.times import iso_utc


def key_view(key: TeamKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "key": key.hint + "…",
        "enabled": key.enabled,
        "concurrency": key.concurrency,
        "account": key.account_id,
        "group": key.group,
        "limits": limits_view(key.limits),
        "allow_other_clients": key.allow_other_clients,
        "note": key.note,
        "created": iso_utc(key.created_at),
    }


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


async def apply_limits(runtime: Runtime, key: TeamKey, options: dict[str, Any]) -> None:
    limits = key.limits
    if options["concurrency"] is not None:
        key.concurrency = options["concurrency"] or None
    windows = {w.seconds: w for w in limits.windows}
    for field, value in (("requests", options["rpm"]), ("tokens", options["tpm"])):
        if value is not None:
            minute = windows.setdefault(60, LimitWindow(seconds=60))
            setattr(minute, field, value or None)
    for text in options["windows"]:
        window = _window(text)
        windows[window.seconds] = window
    limits.windows = sorted((w for w in windows.values() if w.requests or w.tokens), key=lambda w: w.seconds)
    for option, period in BUDGET_OPTIONS.items():
        if options[option] is not None:
            limits.budgets_nanousd[period] = round(options[option] * NANOS_PER_USD)
            if not options[option]:
                del limits.budgets_nanousd[period]
    if options["allow_models"] is not None:
        limits.models_allow = _patterns(options["allow_models"])
    if options["deny_models"] is not None:
        limits.models_deny = _patterns(options["deny_models"])
    if options["claude_code_only"] is not None:
        limits.claude_code_only = options["claude_code_only"]
    if options["allow_other_clients"] is not None:
        key.allow_other_clients = options["allow_other_clients"]
    if options["expires"] is not None:
        limits.expires_at = options["expires"].replace(tzinfo=dt.UTC).timestamp() + 86400
    if options["expires_after_days"] is not None:
        limits.expires_after_days = options["expires_after_days"] or None
    if options["account_name"] is not None:
        account = await runtime.store.find_account(options["account_name"]) if options["account_name"] else None
        if options["account_name"] and account is None:
            raise click.BadParameter(f"no account named {options['account_name']!r}", param_hint="--account")
        key.account_id = account.id if account else None
    if options["group"] is not None:
        key.group = options["group"] or None


async def _require(runtime: Runtime, name: str) -> TeamKey:
    key = await runtime.store.find_key(name)
    if key is None:
        raise click.ClickException(f"no team key named {name!r} (see `relay keys list`)")
    return key


def _issue(runtime: Runtime) -> tuple[str, str, str]:
    secret = runtime.keyring.new_team_key()
    return secret, runtime.keyring.hash_team_key(secret), secret[:7]


def _show_secret(secret: str, view: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        emit_record({**view, "key": secret}, fmt)
    else:
        emit_record(view, fmt)
        click.echo(f"\nkey: {secret}\nThis is the only time the key is shown; give it to its owner now.")


@click.group()
def keys() -> None:
    """Team keys: one per person."""


@keys.command()
@click.argument("name")
@click.option("--note", default="", help="free text, e.g. the owner")
@limit_options
@format_option()
def create(name: str, note: str, fmt: str, **options: Any) -> None:
    """Create a key and print its secret once."""

    async def op(runtime: Runtime) -> tuple[str, TeamKey]:
        secret, key_hash, hint = _issue(runtime)
        key = TeamKey(name=name, key_hash=key_hash, hint=hint, note=note)
        await apply_limits(runtime, key, options)
        await runtime.store.create_key(key)
        return secret, key

    secret, key = run(op)
    _show_secret(secret, key_view(key), fmt)


@keys.command("list")
@format_option()
def list_keys(fmt: str) -> None:
    """All keys (never their secrets)."""
    emit_rows([key_view(k) for k in run(lambda rt: rt.store.list_keys())], fmt)


@keys.command()
@click.argument("name")
@format_option()
def show(name: str, fmt: str) -> None:
    """One key: its limits next to what it has used of them."""

    async def op(runtime: Runtime) -> dict[str, Any]:
        key = await _require(runtime, name)
        return {**key_view(key), **await key_report(runtime.store, key)}

    emit_record(run(op), fmt)


def _set_enabled(name: str, enabled: bool) -> None:
    async def op(runtime: Runtime) -> None:
        key = await _require(runtime, name)
        key.enabled = enabled
        await runtime.store.save_key(key)

    run(op)
    click.echo(f"key {name} {'enabled' if enabled else 'disabled'}")


@keys.command()
@click.argument("name")
@click.option("--note", default=None, help="free text, e.g. the owner")
@limit_options
@format_option()
def update(name: str, note: str | None, fmt: str, **options: Any) -> None:
    """Change a key's note, limits or binding (0 or '' removes a limit)."""

    async def op(runtime: Runtime) -> TeamKey:
        key = await _require(runtime, name)
        if note is not None:
            key.note = note
        await apply_limits(runtime, key, options)
        await runtime.store.save_key(key)
        return key

    emit_record(key_view(run(op)), fmt)


@keys.command()
@click.argument("name")
def enable(name: str) -> None:
    """Let the key be used again."""
    _set_enabled(name, True)


@keys.command()
@click.argument("name")
def disable(name: str) -> None:
    """Refuse the key (401) until enabled again."""
    _set_enabled(name, False)


@keys.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def delete(name: str, yes: bool) -> None:
    """Delete the key for good (its usage history stays)."""
    if not yes:
        click.confirm(f"Delete key {name}?", abort=True)

    async def op(runtime: Runtime) -> None:
        await runtime.store.delete_key(await _require(runtime, name))

    run(op)
    click.echo(f"key {name} deleted")


@keys.command()
@click.argument("name")
@format_option()
def rotate(name: str, fmt: str) -> None:
    """Replace the key's secret; the old one stops working at once."""

    async def op(runtime: Runtime) -> tuple[str, TeamKey]:
        key = await _require(runtime, name)
        old_hash = key.key_hash
        secret, key.key_hash, key.hint = _issue(runtime)
        await runtime.store.save_key(key, old_hash=old_hash)
        return secret, key

    secret, key = run(op)
    _show_secret(secret, key_view(key), fmt)
