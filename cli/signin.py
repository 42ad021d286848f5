"""`relay accounts add-oauth`: signing a subscription account in, in one go or in two (--no-wait, --code)."""

from __future__ import annotations

import json
import sys

import click

from cli.account_options import priority_option
from cli.account_options import proxy_option
from cli.account_options import weight_option
from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_lines
from cli.output import format_option
from cli.tables import Clock
from cli.tables import account_lines
from relay_core.admin.service import AdminService
from relay_core.admin.signin import LOGIN_TTL_S


@click.command("add-oauth")
@click.argument("name")
@click.option("--setup-token", is_flag=True, help="inference-only sign-in: a one-year token without refresh")
@click.option("--code", default=None, help="finish a started sign-in with the pasted code#state or callback URL")
@click.option("--no-wait", is_flag=True, help="print the sign-in URL and stop; finish later with --code")
@priority_option
@weight_option
@proxy_option
@format_option()
@pass_cli_context
def add_oauth(
    context: CliContext,
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

    async def op(admin: AdminService) -> None:
        pasted = code
        if pasted is None:
            url = await admin.signin.start(name, setup_token, priority, weight, proxy)
            if fmt == "json" and no_wait:
                click.echo(json.dumps({"authorize_url": url, "expires_in": LOGIN_TTL_S}))
                return
            click.echo(f"Open this URL, sign in, and copy the code shown at the end:\n\n{url}\n", err=fmt == "json")
            if no_wait:
                click.echo(f"Then run: relay accounts add-oauth {name} --code 'CODE#STATE' (within 15 minutes)")
                return
            pasted = click.prompt("Code", hide_input=sys.stdin.isatty(), err=True)
        account = await admin.signin.finish(name, pasted)
        view = (await admin.accounts.views([account]))[0]
        emit_lines(view, fmt, account_lines(view, Clock.local(admin.runtime.store.zone)))

    context.run(op)
