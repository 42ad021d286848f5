"""`relay accounts`: the upstream accounts the team shares. Their secrets are never printed."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from typing import TextIO

import click

from cli.context import run
from cli.output import emit_record
from cli.output import emit_rows
from cli.output import format_option
from relay_core.account_urls import seal_urls
from relay_core.account_urls import set_url
from relay_core.account_urls import shown_url
from relay_core.crypto import Keyring
from relay_core.diagnostics import masked_url
from relay_core.health import AccountHealth
from relay_core.health import account_state
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from relay_core.oauth import OAuthError
from relay_core.oauth import parse_credentials_json
from relay_core.runtime import Runtime
from relay_core.times import iso_utc
from relay_core.upstream import proxy_of
from relay_core.upstream import target_of


def account_view(account: Account, health: AccountHealth | None = None, requests_today: int = 0) -> dict[str, Any]:
    now = time.time()
    health = health or AccountHealth()
    cooling = {family: until for family, until in health.cooldowns.items() if until > now}
    limits = health.rate_limits
    return {
        "id": account.id,
        "name": account.name,
        "kind": account.kind.value,
        "state": account_state(account, health, now),
        "limited_until": iso_utc(max(cooling.values())) if cooling else None,
        "limited_families": ",".join(sorted(cooling)) or None,
        "utilization_5h": limits.get("rl_5h_utilization"),
        "reset_5h": iso_utc(limits.get("rl_5h_reset")),
        "utilization_7d": limits.get("rl_7d_utilization"),
        "reset_7d": iso_utc(limits.get("rl_7d_reset")),
        "last_error": health.reason or None,
        "requests_today": requests_today,
        "priority": account.priority,
        "weight": account.weight,
        "groups": ",".join(account.groups) or None,
        "base_url": masked_url(shown_url(account, "base_url")) or "(default)",
        "proxy": masked_url(shown_url(account, "proxy")),
        "email": account.email,
        "organization": account.organization,
        "expires_at": iso_utc(account.expires_at),
        "refreshed_at": iso_utc(account.refreshed_at),
        "refreshable": account.refreshable,
        "signin_ends_at": iso_utc(account.signin_ends_at),
        "user_message_queue": {None: "default", True: "on", False: "off"}[account.user_message_queue],
        "allow_extra_usage": account.allow_extra_usage,
        "allow_other_clients": account.allow_other_clients,
    }


LIST_COLUMNS = (
    "name",
    "kind",
    "state",
    "limited_until",
    "limited_families",
    "utilization_5h",
    "utilization_7d",
    "last_error",
    "requests_today",
    "priority",
    "weight",
    "signin_ends_at",
)


async def account_views(runtime: Runtime, accounts: list[Account]) -> list[dict[str, Any]]:
    """Accounts with their health and today's request count (three store reads, whatever the count)."""
    store = runtime.store
    health = await store.account_health([a.id for a in accounts])
    today = dt.datetime.now(store.zone).date()
    requests: Counter[str] = Counter()
    for cell in await store.usage_cells(today, today):
        if cell.metric == "requests":
            requests[cell.account_id] += cell.value
    return [account_view(a, health[a.id], requests[a.id]) for a in accounts]


async def _require(runtime: Runtime, name: str) -> Account:
    account = await runtime.store.find_account(name)
    if account is None:
        raise click.ClickException(f"no account named {name!r} (see `relay accounts list`)")
    return account


def check_urls(base_url: str | None, proxy: str | None) -> None:
    for value, check, hint in ((base_url, target_of, "--base-url"), (proxy, proxy_of, "--proxy")):
        if value:
            try:
                check(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=hint) from None


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
        seal_urls(account, runtime.keyring)
        await runtime.store.create_account(account)
        return account

    emit_record(_show(run(op)), fmt)


priority_option = click.option("--priority", default=50, show_default=True, help="higher is used first")
proxy_option = click.option("--proxy", default=None, help="outbound HTTP proxy, http://[user:pass@]host:port")
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
@proxy_option
@format_option()
def add_console(
    name: str, api_key: str, base_url: str | None, priority: int, weight: int, proxy: str | None, fmt: str
) -> None:
    """Add an Anthropic API-key account."""
    check_urls(base_url, proxy)
    fields = dict(name=name, kind=AccountKind.CONSOLE, base_url=base_url, priority=priority, weight=weight, proxy=proxy)
    _add(fields, api_key.strip(), None, fmt)


@accounts.command("add-token")
@click.argument("name")
@click.option("--access-token", default=None, help="subscription OAuth access token (sk-ant-oat01-…)")
@click.option("--refresh-token", default=None, help="its refresh token (sk-ant-ort01-…)")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, help="seconds until the token expires")
@click.option(
    "--credentials-file",
    type=click.File("r"),
    default=None,
    help="import Claude Code's ~/.claude/.credentials.json instead ('-' reads stdin)",
)
@click.option("--base-url", default=None, help="upstream base URL (default: the relay's upstream_url)")
@priority_option
@weight_option
@proxy_option
@format_option()
def add_token(
    name: str,
    access_token: str | None,
    refresh_token: str | None,
    expires_in: int | None,
    credentials_file: TextIO | None,
    base_url: str | None,
    priority: int,
    weight: int,
    proxy: str | None,
    fmt: str,
) -> None:
    """Import a Claude subscription OAuth token (or Claude Code's credentials file)."""
    check_urls(base_url, proxy)
    expires_at = time.time() + expires_in if expires_in else None
    if credentials_file is not None:
        try:
            tokens = parse_credentials_json(credentials_file.read())
        except OAuthError as exc:
            raise click.BadParameter(str(exc), param_hint="--credentials-file") from None
        access_token = tokens.access_token.get_secret_value()
        refresh_token = tokens.refresh_token.get_secret_value() if tokens.refresh_token else None
        expires_at = tokens.expires_at
    if not access_token:
        raise click.UsageError("give --access-token or --credentials-file")
    fields = dict(
        name=name,
        kind=AccountKind.OAUTH,
        base_url=base_url,
        priority=priority,
        weight=weight,
        expires_at=expires_at,
        proxy=proxy,
    )
    _add(fields, access_token.strip(), refresh_token.strip() if refresh_token else None, fmt)


@accounts.command("list")
@format_option()
def list_accounts(fmt: str) -> None:
    """All accounts: state, limits, utilisation, last error, requests today."""

    async def op(runtime: Runtime) -> list[dict[str, Any]]:
        return await account_views(runtime, await runtime.store.list_accounts())

    rows = run(op)
    emit_rows(rows if fmt == "json" else [{c: r[c] for c in LIST_COLUMNS} for r in rows], fmt)


@accounts.command()
@click.argument("name")
@format_option()
def show(name: str, fmt: str) -> None:
    """One account."""

    async def op(runtime: Runtime) -> dict[str, Any]:
        return (await account_views(runtime, [await _require(runtime, name)]))[0]

    emit_record(run(op), fmt)


@accounts.command()
@click.argument("name")
def reset(name: str) -> None:
    """Forget the account's cooldowns, error state and failure streak (it is tried again at once)."""

    async def op(runtime: Runtime) -> None:
        await runtime.store.reset_health((await _require(runtime, name)).id)

    run(op)
    click.echo(f"account {name} reset")


def _set_enabled(name: str, enabled: bool) -> None:
    def change(account: Account, keyring: Keyring) -> None:
        account.enabled = enabled

    _change(name, change)
    click.echo(f"account {name} {'enabled' if enabled else 'disabled'}")


@accounts.command()
@click.argument("name")
@click.option("--priority", type=int, default=None, help="higher is used first")
@click.option("--weight", type=click.IntRange(min=1), default=None, help="share among equal priority")
@click.option("--base-url", default=None, help="upstream base URL ('' for the relay's default)")
@click.option("--proxy", default=None, help="outbound HTTP proxy ('' for none)")
@click.option("--groups", default=None, help="comma-separated groups a key can be bound to ('' for none)")
@click.option(
    "--queue",
    type=click.Choice(["on", "off", "default"]),
    default=None,
    help="rate lock for human turns (default: on for OAuth accounts, per USER_MESSAGE_QUEUE_ENABLED)",
)
@click.option(
    "--allow-extra-usage/--no-allow-extra-usage",
    default=None,
    help="keep using a subscription once it spends extra usage, which is billed to the subscription's owner "
    "(default: no, it rests until its plan limits reset)",
)
@click.option(
    "--allow-other-clients/--no-allow-other-clients",
    default=None,
    help="send clients that are not Claude Code to this subscription; since 2026-04 Anthropic bills them as "
    "extra usage (to the owner) or refuses them (default: no)",
)
@format_option()
def update(
    name: str,
    priority: int | None,
    weight: int | None,
    base_url: str | None,
    proxy: str | None,
    groups: str | None,
    queue: str | None,
    allow_extra_usage: bool | None,
    allow_other_clients: bool | None,
    fmt: str,
) -> None:
    """Change an account's settings (never its tokens, which a concurrent refresh may be replacing)."""
    check_urls(base_url or None, proxy or None)

    subscription_only = allow_extra_usage is not None or allow_other_clients is not None

    def change(account: Account, keyring: Keyring) -> None:
        if subscription_only and account.kind is not AccountKind.OAUTH:
            raise click.UsageError(
                "--allow-extra-usage and --allow-other-clients concern subscription (OAuth) accounts; "
                "an API-key account pays per token and serves every client"
            )
        if priority is not None:
            account.priority = priority
        if weight is not None:
            account.weight = weight
        if base_url is not None:
            set_url(account, "base_url", base_url or None, keyring)
        if proxy is not None:
            set_url(account, "proxy", proxy or None, keyring)
        if groups is not None:
            account.groups = [g.strip() for g in groups.split(",") if g.strip()]
        if queue is not None:
            account.user_message_queue = {"on": True, "off": False, "default": None}[queue]
        if allow_extra_usage is not None:
            account.allow_extra_usage = allow_extra_usage
        if allow_other_clients is not None:
            account.allow_other_clients = allow_other_clients

    emit_record(_show(_change(name, change)), fmt)


def _change(name: str, change: Callable[[Account, Keyring], None]) -> Account:
    async def op(runtime: Runtime) -> Account:
        account = await _require(runtime, name)
        updated = await runtime.store.update_account(account.id, lambda a: change(a, runtime.keyring))
        if updated is None:
            raise click.ClickException(f"account {name!r} was deleted meanwhile")
        return updated

    return run(op)


def _show(account: Account) -> dict[str, Any]:
    async def op(runtime: Runtime) -> dict[str, Any]:
        return (await account_views(runtime, [account]))[0]

    return run(op)


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
