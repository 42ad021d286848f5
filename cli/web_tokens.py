"""`relay web-token`: admin tokens for the team dashboard on the /relay/ page. The secret is shown once."""

from __future__ import annotations

import secrets
from typing import Any

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_record
from cli.output import emit_rows
from cli.output import format_option
from relay_core.times import iso_utc
from relay_core.web.records import WebToken


def web_token_view(token: WebToken) -> dict[str, Any]:
    return {"name": token.name, "token": token.hint + "…", "created": iso_utc(token.created_at)}


@click.group("web-token")
def web_token() -> None:
    """Admin tokens for the team dashboard at /relay/ (the page only shows; administration stays here)."""


@web_token.command()
@click.option("--name", default=None, help="what the token is for (default: a random name)")
@format_option()
@pass_cli_context
def create(context: CliContext, name: str | None, fmt: str) -> None:
    """Create a token and print it once; sign in with it at /relay/ to open the team dashboard."""
    chosen = name or f"web-{secrets.token_hex(3)}"
    issued = context.run(lambda admin: admin.web_tokens.create(chosen))
    view = web_token_view(issued.token)
    if fmt == "json":
        emit_record({**view, "token": issued.secret}, fmt)
    else:
        emit_record(view, fmt)
        click.echo(f"\ntoken: {issued.secret}\nThis is the only time the token is shown; keep it now.")


@web_token.command("list")
@format_option()
@pass_cli_context
def list_tokens(context: CliContext, fmt: str) -> None:
    """All web tokens (never their secrets)."""
    emit_rows([web_token_view(t) for t in context.run(lambda admin: admin.web_tokens.list_tokens())], fmt)


@web_token.command()
@click.argument("name")
@pass_cli_context
def revoke(context: CliContext, name: str) -> None:
    """Delete a token: it and every page session opened with it stop working at once."""
    context.run(lambda admin: admin.web_tokens.revoke(name))
    click.echo(f"web token {name!r} revoked")
