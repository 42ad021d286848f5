"""`relay accounts`: the upstream accounts the team shares. Their secrets are never printed."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click

from cli.context import run
from cli.output import emit_record
from cli.output import emit_rows
from cli.output import format_option
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from relay_core.runtime import Runtime
from relay_core.upstream import target_of


def _when(epoch: float | None) -> str | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds") if epoch else None


def account_view(account: Account) -> dict[str, Any]:
    now = time.time()
    state = "disabled" if not account.enabled else "expired" if account.is_expired(now) else "active"
    return {
        "id": account.id,
        "name": account.name,
        "kind": account.kind.value,
        "state": state,
        "priority": account.priority,
        "weight": account.weight,
        "base_url": account.base_url or "(default)",
        "expires_at": _when(account.expires_at),
        "refreshable": account.sealed_refresh_token is not None,
        "user_message_queue": {None: "default", True: "on", False: "off"}[account.user_message_queue],
    }


async def _require(runtime: Runtime, name: str) -> Account:
    account = await runtime.store.find_account(name)
    if account is None:
        raise click.ClickException(f"no account named {name!r} (see `relay accounts list`)")
    return account


def _check_base_url(base_url: str | None) -> None:
    if base_url is not None:
        try:
            target_of(base_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--base-url") from None


def _add(account_fields: dict[str, Any], secret: str, refresh_token: str | None, fmt: str) -> None:
    async def op(runtime: Runtime) -> Account:
        account_id = new_id()
        seal = runtime.keyring.seal
        account = Account(
            id=account_id,
            sealed_secret=seal(secret, account_id),
            sealed_refresh_token=seal(refresh_token, account_id) if refresh_token else None,
            **account_fields,
        )
        await runtime.store.create_account(account)
        return account

    emit_record(account_view(run(op)), fmt)


priority_option = click.option("--priority", default=50, show_default=True, help="higher is used first")
weight_option = click.option(
    "--weight",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="share of new sessions among accounts of equal priority",
)


@click.group()
def accounts() -> None:
    """Upstream accounts: Claude subscriptions and Anthropic API keys."""


@accounts.command("add-console")
@click.argument("name")
@click.option("--api-key", required=True, help="Anthropic API key (or the key of a compatible endpoint)")
@click.option("--base-url", default=None, help="upstream base URL (default: the relay's upstream_url)")
@priority_option
@weight_option
@format_option()
def add_console(name: str, api_key: str, base_url: str | None, priority: int, weight: int, fmt: str) -> None:
    """Add an Anthropic API-key account."""
    _check_base_url(base_url)
    fields = dict(name=name, kind=AccountKind.CONSOLE, base_url=base_url, priority=priority, weight=weight)
    _add(fields, api_key.strip(), None, fmt)


@accounts.command("add-token")
@click.argument("name")
@click.option("--access-token", required=True, help="subscription OAuth access token (sk-ant-oat01-…)")
@click.option("--refresh-token", default=None, help="its refresh token (sk-ant-ort01-…)")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, help="seconds until the token expires")
@click.option("--base-url", default=None, help="upstream base URL (default: the relay's upstream_url)")
@priority_option
@weight_option
@format_option()
def add_token(
    name: str,
    access_token: str,
    refresh_token: str | None,
    expires_in: int | None,
    base_url: str | None,
    priority: int,
    weight: int,
    fmt: str,
) -> None:
    """Import a Claude subscription OAuth token."""
    _check_base_url(base_url)
    fields = dict(
        name=name,
        kind=AccountKind.OAUTH,
        base_url=base_url,
        priority=priority,
        weight=weight,
        expires_at=time.time() + expires_in if expires_in else None,
    )
    _add(fields, access_token.strip(), refresh_token.strip() if refresh_token else None, fmt)


@accounts.command("list")
@format_option()
def list_accounts(fmt: str) -> None:
    """All accounts and their state."""
    emit_rows([account_view(a) for a in run(lambda rt: rt.store.list_accounts())], fmt)


@accounts.command()
@click.argument("name")
@format_option()
def show(name: str, fmt: str) -> None:
    """One account."""

    async def op(runtime: Runtime) -> Account:
        return await _require(runtime, name)

    emit_record(account_view(run(op)), fmt)


def _set_enabled(name: str, enabled: bool) -> None:
    async def op(runtime: Runtime) -> None:
        account = await _require(runtime, name)
        account.enabled = enabled
        await runtime.store.save_account(account)

    run(op)
    click.echo(f"account {name} {'enabled' if enabled else 'disabled'}")


@accounts.command()
@click.argument("name")
@click.option("--priority", type=int, default=None, help="higher is used first")
@click.option("--weight", type=click.IntRange(min=1), default=None, help="share among equal priority")
@click.option("--base-url", default=None, help="upstream base URL ('' for the relay's default)")
@click.option(
    "--queue",
    type=click.Choice(["on", "off", "default"]),
    default=None,
    help="rate lock for human turns (default: on for OAuth accounts, per USER_MESSAGE_QUEUE_ENABLED)",
)
@format_option()
def update(
    name: str, priority: int | None, weight: int | None, base_url: str | None, queue: str | None, fmt: str
) -> None:
    """Change an account's scheduling settings."""
    _check_base_url(base_url or None)

    async def op(runtime: Runtime) -> Account:
        account = await _require(runtime, name)
        if priority is not None:
            account.priority = priority
        if weight is not None:
            account.weight = weight
        if base_url is not None:
            account.base_url = base_url or None
        if queue is not None:
            account.user_message_queue = {"on": True, "off": False, "default": None}[queue]
        await runtime.store.save_account(account)
        return account

    emit_record(account_view(run(op)), fmt)


@accounts.command()
@click.argument("name")
def enable(name: str) -> None:
    """Put the account back into rotation."""
    _set_enabled(name, True)


@accounts.command()
@click.argument("name")
def disable(name: str) -> None:
    """Take the account out of rotation."""
    _set_enabled(name, False)


@accounts.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def delete(name: str, yes: bool) -> None:
    """Delete the account and its stored credentials."""
    if not yes:
        click.confirm(f"Delete account {name}?", abort=True)

    async def op(runtime: Runtime) -> None:
        await runtime.store.delete_account(await _require(runtime, name))

    run(op)
    click.echo(f"account {name} deleted")
