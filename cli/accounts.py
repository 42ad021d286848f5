"""`relay accounts`: the upstream accounts the team shares. Their secrets are never printed."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import TextIO

import click

from cli.account_options import max_concurrency_option
from cli.account_options import pause_at_option
from cli.account_options import priority_option
from cli.account_options import proxy_option
from cli.account_options import rpm_option
from cli.account_options import weight_option
from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_lines
from cli.output import emit_record
from cli.output import emit_table
from cli.output import format_option
from cli.secret_input import HELP
from cli.secret_input import one_from_stdin
from cli.secret_input import optional_secret
from cli.secret_input import secret_input
from cli.signin import add_oauth
from cli.tables import Clock
from cli.tables import account_columns
from cli.tables import account_lines
from cli.tables import table_options
from relay_core.admin.accounts import AccountChanges
from relay_core.admin.service import AdminService
from relay_core.google_oauth import GoogleError
from relay_core.google_oauth import parse_credentials_file
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.oauth import OAuthError
from relay_core.oauth import parse_credentials_json


def _emit_account(context: CliContext, fmt: str, operation: Callable[[AdminService], Awaitable[Account]]) -> None:
    """Run an operation that yields an account and print that account, on the same Runtime."""

    async def op(admin: AdminService) -> tuple[dict[str, Any], Clock]:
        return (await admin.accounts.views([await operation(admin)]))[0], Clock.local(admin.runtime.store.zone)

    view, clock = context.run(op)
    emit_lines(view, fmt, account_lines(view, clock))


@click.group()
def accounts() -> None:
    """Upstream accounts: Claude subscriptions, Anthropic API keys, Gemini API keys and Google accounts."""


@accounts.command("add-console")
@click.argument("name")
@click.option("--api-key", default=None, help=f"Anthropic API key (or the key of a compatible endpoint); {HELP}")
@click.option("--base-url", default=None, help="upstream base URL (default: the relay's upstream_url)")
@priority_option
@weight_option
@proxy_option
@max_concurrency_option
@rpm_option
@format_option()
@pass_cli_context
def add_console(
    context: CliContext,
    name: str,
    api_key: str | None,
    base_url: str | None,
    priority: int,
    weight: int,
    proxy: str | None,
    max_concurrency: int | None,
    rpm: int | None,
    fmt: str,
) -> None:
    """Add an Anthropic API-key account."""
    secret = secret_input(api_key, "--api-key", "Anthropic API key")
    fields: dict[str, Any] = dict(base_url=base_url, priority=priority, weight=weight, proxy=proxy)
    fields.update(max_concurrency=max_concurrency or None, rpm=rpm or None)
    _emit_account(context, fmt, lambda admin: admin.accounts.add(name, AccountKind.CONSOLE, secret, **fields))


@accounts.command("add-token")
@click.argument("name")
@click.option("--access-token", default=None, help=f"subscription OAuth access token (sk-ant-oat01-…); {HELP}")
@click.option("--refresh-token", default=None, help="its refresh token (sk-ant-ort01-…); '-' reads it from stdin")
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
@max_concurrency_option
@rpm_option
@format_option()
@pass_cli_context
def add_token(
    context: CliContext,
    name: str,
    access_token: str | None,
    refresh_token: str | None,
    expires_in: int | None,
    credentials_file: TextIO | None,
    base_url: str | None,
    priority: int,
    weight: int,
    proxy: str | None,
    max_concurrency: int | None,
    rpm: int | None,
    fmt: str,
) -> None:
    """Import a Claude subscription OAuth token (or Claude Code's credentials file)."""
    expires_at = time.time() + expires_in if expires_in else None
    if credentials_file is not None:
        try:
            tokens = parse_credentials_json(credentials_file.read())
        except OAuthError as exc:
            raise click.BadParameter(str(exc), param_hint="--credentials-file") from None
        access_token = tokens.access_token.get_secret_value()
        refresh_token = tokens.refresh_token.get_secret_value() if tokens.refresh_token else None
        expires_at = tokens.expires_at
    else:
        one_from_stdin(access_token, refresh_token)
        access_token = secret_input(access_token, "--access-token", "OAuth access token")
        refresh_token = optional_secret(refresh_token, "--refresh-token")
    if not access_token:
        raise click.UsageError("give --access-token or --credentials-file")
    secret = access_token
    fields: dict[str, Any] = dict(
        base_url=base_url, priority=priority, weight=weight, expires_at=expires_at, proxy=proxy
    )
    fields.update(max_concurrency=max_concurrency or None, rpm=rpm or None)
    _emit_account(
        context, fmt, lambda admin: admin.accounts.add(name, AccountKind.OAUTH, secret, refresh_token, **fields)
    )


@accounts.command("add-gemini")
@click.argument("name")
@click.option("--api-key", default=None, help=f"a Gemini API key (Gemini CLI's API-key method); {HELP}")
@click.option(
    "--credentials-file",
    type=click.File("r"),
    default=None,
    help="a Google account for Code Assist: Gemini CLI's ~/.gemini/oauth_creds.json ('-' reads stdin)",
)
@click.option("--oauth", "sign_in", is_flag=True, help="sign a Google account in: prints a URL, asks for the code")
@click.option("--no-wait", is_flag=True, help="with --oauth: print the URL and stop; finish later with --code")
@click.option("--code", default=None, help="finish a started Google sign-in with the code Google showed")
@click.option("--project", default=None, help="Code Assist: its Cloud project (default: the one Code Assist names)")
@click.option("--base-url", default=None, help="upstream base URL (default: RELAY_GEMINI__API_URL or CODE_ASSIST_URL)")
@priority_option
@weight_option
@proxy_option
@max_concurrency_option
@rpm_option
@format_option()
@pass_cli_context
def add_gemini(
    context: CliContext,
    name: str,
    api_key: str | None,
    credentials_file: TextIO | None,
    sign_in: bool,
    no_wait: bool,
    code: str | None,
    project: str | None,
    base_url: str | None,
    priority: int,
    weight: int,
    proxy: str | None,
    max_concurrency: int | None,
    rpm: int | None,
    fmt: str,
) -> None:
    """Add a Gemini account: an API key, or a Google account (signed in here with --oauth, or with Gemini CLI)."""
    fields: dict[str, Any] = dict(base_url=base_url, priority=priority, weight=weight, proxy=proxy)
    fields.update(max_concurrency=max_concurrency or None, rpm=rpm or None)
    if sum((api_key is not None, credentials_file is not None, sign_in or code is not None)) > 1:
        raise click.UsageError("give one of --api-key, --credentials-file and --oauth")
    if sign_in or code is not None:
        _google_sign_in(context, name, code, no_wait, {**fields, "project": project}, fmt)
        return
    if credentials_file is not None:
        try:
            tokens = parse_credentials_file(credentials_file.read())
        except GoogleError as exc:
            raise click.BadParameter(str(exc), param_hint="--credentials-file") from None
        _emit_account(context, fmt, lambda admin: admin.accounts.add_google_account(name, tokens, project, **fields))
        return
    secret = secret_input(api_key, "--api-key", "Gemini API key")
    _emit_account(context, fmt, lambda admin: admin.accounts.add(name, AccountKind.GEMINI_API_KEY, secret, **fields))


def _google_sign_in(
    context: CliContext, name: str, code: str | None, no_wait: bool, fields: dict[str, Any], fmt: str
) -> None:
    """Gemini CLI's no-browser sign-in: a URL to open, then the code Google shows, pasted back."""

    async def op(admin: AdminService) -> tuple[dict[str, Any], Clock] | None:
        pasted = code
        if pasted is None:
            url = await admin.signin.start_google(name, fields)
            click.echo(f"Open this URL, sign in with the Google account, and copy the code shown:\n\n{url}\n", err=True)
            if no_wait:
                click.echo(f"Then run: relay accounts add-gemini {name} --code CODE (within 15 minutes)", err=True)
                return None
            pasted = click.prompt("Code", hide_input=sys.stdin.isatty(), err=True)
        account = await admin.signin.finish_google(name, pasted)
        return (await admin.accounts.views([account]))[0], Clock.local(admin.runtime.store.zone)

    shown = context.run(op)
    if shown is not None:
        view, clock = shown
        emit_lines(view, fmt, account_lines(view, clock))


@accounts.command("list")
@format_option()
@table_options
@pass_cli_context
def list_accounts(context: CliContext, fmt: str, sort: str | None, wide: bool) -> None:
    """All accounts: state, limits, utilisation, last error, requests today."""

    async def op(admin: AdminService) -> tuple[list[dict[str, Any]], Clock]:
        views = await admin.accounts.views(await admin.accounts.list_accounts())
        return views, Clock.local(admin.runtime.store.zone)

    rows, clock = context.run(op)
    emit_table(rows, fmt, account_columns(clock), sort, wide)


@accounts.command()
@click.argument("name")
@format_option()
@pass_cli_context
def show(context: CliContext, name: str, fmt: str) -> None:
    """One account."""
    _emit_account(context, fmt, lambda admin: admin.accounts.get(name))


@accounts.command()
@click.argument("name")
@pass_cli_context
def reset(context: CliContext, name: str) -> None:
    """Forget the account's cooldowns, error state and failure streak (it is tried again at once)."""
    context.run(lambda admin: admin.accounts.reset(name))
    click.echo(f"account {name} reset")


@accounts.command()
@click.argument("name")
@click.option("--priority", type=int, default=None, help="higher is used first")
@click.option("--weight", type=click.IntRange(min=1), default=None, help="share among equal priority")
@click.option("--base-url", default=None, help="upstream base URL ('' for the relay's default)")
@click.option("--proxy", default=None, help="outbound proxy: http://, socks5:// or socks5h:// ('' for none)")
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
@pause_at_option
@max_concurrency_option
@rpm_option
@format_option()
@pass_cli_context
def update(
    context: CliContext,
    name: str,
    priority: int | None,
    weight: int | None,
    base_url: str | None,
    proxy: str | None,
    groups: str | None,
    queue: Literal["on", "off", "default"] | None,
    allow_extra_usage: bool | None,
    allow_other_clients: bool | None,
    pause_at: float | None,
    max_concurrency: int | None,
    rpm: int | None,
    fmt: str,
) -> None:
    """Change an account's settings (never its tokens, which a concurrent refresh may be replacing)."""
    changes = AccountChanges(
        priority=priority,
        weight=weight,
        base_url=base_url,
        proxy=proxy,
        groups=[g.strip() for g in groups.split(",") if g.strip()] if groups is not None else None,
        queue=queue,
        allow_extra_usage=allow_extra_usage,
        allow_other_clients=allow_other_clients,
        pause_at=pause_at,
        max_concurrency=max_concurrency,
        rpm=rpm,
    )
    _emit_account(context, fmt, lambda admin: admin.accounts.update(name, changes))


def _set_enabled(context: CliContext, name: str, enabled: bool) -> None:
    context.run(lambda admin: admin.accounts.set_enabled(name, enabled))
    click.echo(f"account {name} {'enabled' if enabled else 'disabled'}")


@accounts.command()
@click.argument("name")
@pass_cli_context
def enable(context: CliContext, name: str) -> None:
    """Put the account back into rotation."""
    _set_enabled(context, name, True)


@accounts.command()
@click.argument("name")
@pass_cli_context
def disable(context: CliContext, name: str) -> None:
    """Take the account out of rotation."""
    _set_enabled(context, name, False)


@accounts.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_cli_context
def delete(context: CliContext, name: str, yes: bool) -> None:
    """Delete the account and its stored credentials."""
    if not yes:
        click.confirm(f"Delete account {name}?", abort=True)
    context.run(lambda admin: admin.accounts.delete(name))
    click.echo(f"account {name} deleted")


@accounts.command()
@click.argument("name")
@format_option()
@pass_cli_context
def refresh(context: CliContext, name: str, fmt: str) -> None:
    """Refresh the account's token now (one refresh across all relays)."""
    _emit_account(context, fmt, lambda admin: admin.accounts.refresh(name))


@accounts.command()
@click.argument("name")
@click.option(
    "--model", default="claude-haiku-4-5-20251001", show_default=True, help="a Gemini account uses gemini-2.5-flash"
)
@format_option()
@pass_cli_context
def test(context: CliContext, name: str, model: str, fmt: str) -> None:
    """Send one tiny real request through the account; show status, latency and every limit header it answered."""
    result = context.run(lambda admin: admin.accounts.probe(name, model))
    emit_record(result, fmt)
    if result["status"] >= 400:
        sys.exit(1)


accounts.add_command(add_oauth)
