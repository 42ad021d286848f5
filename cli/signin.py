"""`relay accounts add-oauth / refresh / test`: signing subscription accounts in and checking on them."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cli.accounts import _require
from cli.accounts import _show
from cli.accounts import accounts
from cli.accounts import check_urls
from cli.accounts import priority_option
from cli.accounts import proxy_option
from cli.accounts import weight_option
from cli.context import run
from cli.output import emit_record
from cli.output import format_option
from relay_core import oauth
from relay_core.account_urls import opened
from relay_core.account_urls import seal_urls
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from relay_core.probe import probe
from relay_core.protocols.anthropic.health import judge
from relay_core.runtime import Runtime
from relay_core.times import iso_utc
from relay_core.token_refresh import RefreshFailed

LOGIN_TTL_S = 900


@accounts.command("add-oauth")
@click.argument("name")
@click.option("--setup-token", is_flag=True, help="inference-only sign-in: a one-year token without refresh")
@click.option("--code", default=None, help="finish a started sign-in with the pasted code#state or callback URL")
@click.option("--no-wait", is_flag=True, help="print the sign-in URL and stop; finish later with --code")
@priority_option
@weight_option
@proxy_option
@format_option()
def add_oauth(
    name: str,
    setup_token: bool,
    code: str | None,
    no_wait: bool,
    priority: int,
    weight: int,
    proxy: str | None,
    fmt: str,
) -> None:
    """Sign a Claude Pro/Max account in (PKCE). Prints a URL; paste back the code the browser shows."""
    check_urls(None, proxy)
    if code is None:
        url = run(lambda rt: _start(rt, name, setup_token, priority, weight, proxy))
        if fmt == "json" and no_wait:
            click.echo(json.dumps({"authorize_url": url, "expires_in": LOGIN_TTL_S}))
            return
        click.echo(f"Open this URL, sign in, and copy the code shown at the end:\n\n{url}\n", err=fmt == "json")
        if no_wait:
            click.echo(f"Then run: relay accounts add-oauth {name} --code 'CODE#STATE' (within 15 minutes)")
            return
        code = click.prompt("Code", hide_input=sys.stdin.isatty(), err=True)
    account = run(lambda rt: _finish(rt, name, code))
    emit_record(_show(account), fmt)


async def _start(runtime: Runtime, name: str, setup_token: bool, priority: int, weight: int, proxy: str | None) -> str:
    if await runtime.store.find_account(name) is not None:
        raise click.ClickException(f"an account named {name!r} already exists")
    pkce = oauth.new_pkce()
    pending = {
        "verifier": pkce.verifier,
        "challenge": pkce.challenge,
        "state": pkce.state,
        "setup_token": setup_token,
        "priority": priority,
        "weight": weight,
        "proxy": proxy,
    }
    await runtime.store.save_login(name, runtime.keyring.seal(json.dumps(pending), f"login:{name}"), LOGIN_TTL_S)
    return oauth.authorize_url(runtime.settings.oauth, pkce, setup_token)


async def _finish(runtime: Runtime, name: str, pasted: str) -> Account:
    sealed = await runtime.store.take_login(name)
    if sealed is None:
        raise click.ClickException(f"no sign-in of {name!r} is waiting (they last 15 minutes); start it again")
    pending: dict[str, Any] = json.loads(runtime.keyring.open(sealed, f"login:{name}"))
    pkce = oauth.Pkce(verifier=pending["verifier"], challenge=pending["challenge"], state=pending["state"])
    try:
        code = oauth.parse_pasted_code(pasted, pkce.state)
        tokens = await oauth.exchange_code(
            runtime.settings.oauth, code, pkce, setup_token=pending["setup_token"], proxy=pending["proxy"]
        )
    except oauth.OAuthError as exc:
        raise click.ClickException(f"sign-in failed: {exc}") from None
    account_id = new_id()
    seal = runtime.keyring.seal
    refresh_token = tokens.refresh_token.get_secret_value() if tokens.refresh_token else None
    account = Account(
        id=account_id,
        name=name,
        kind=AccountKind.OAUTH,
        priority=pending["priority"],
        weight=pending["weight"],
        proxy=pending["proxy"],
        sealed_secret=seal(tokens.access_token.get_secret_value(), account_id),
        sealed_refresh_token=seal(refresh_token, account_id) if refresh_token else None,
        expires_at=tokens.expires_at,
        email=tokens.account_email,
        organization=tokens.organization_name,
        scopes=tokens.scopes,
        signin_ends_at=tokens.signin_ends_at,
    )
    await runtime.store.create_account(seal_urls(account, runtime.keyring))
    return account


@accounts.command()
@click.argument("name")
@format_option()
def refresh(name: str, fmt: str) -> None:
    """Refresh the account's token now (one refresh across all relays)."""

    async def op(runtime: Runtime) -> Account:
        account = await _require(runtime, name)
        if not account.refreshable:
            raise click.ClickException(f"account {name!r} has no refresh token")
        try:
            return await runtime.refresher.refresh(account)
        except RefreshFailed as exc:
            raise click.ClickException(str(exc)) from None

    emit_record(_show(run(op)), fmt)


@accounts.command()
@click.argument("name")
@click.option("--model", default="claude-haiku-4-5-20251001", show_default=True)
@format_option()
def test(name: str, model: str, fmt: str) -> None:
    """Send one tiny real request through the account; show status, latency and every limit header it answered."""

    async def op(runtime: Runtime) -> dict[str, Any]:
        account = await runtime.refresher.usable(await _require(runtime, name))
        secret = runtime.keyring.open(account.sealed_secret, account.id)
        result = await probe(opened(account, runtime.keyring), secret, runtime.settings, model)
        rules = runtime.settings.health_rules
        outcome = judge(
            result.status, result.headers, result.body, account.kind, rules, allow_extra_usage=account.allow_extra_usage
        )
        await runtime.store.record_completion(account.id, outcome, rules)
        limits = {name: iso_utc(value) if name.endswith("reset") else value for name, value in result.limits().items()}
        return {
            "account": name,
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "error": outcome.reason or None,
            **limits,
        }

    result = run(op)
    emit_record(result, fmt)
    if result["status"] >= 400:
        sys.exit(1)
