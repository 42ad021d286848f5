"""`relay usage`: tokens, requests, errors and cost, grouped as asked."""

from __future__ import annotations

import datetime as dt

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import REPORT_FORMATS
from cli.output import emit_rows
from cli.output import format_option
from relay_core.reports import GROUPS


@click.command()
@click.option("--by", type=click.Choice(GROUPS), default="key", show_default=True)
@click.option("--key", "key_name", default=None, help="only this team key")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None, help="first day (default: 30 days ago)")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="last day (default: today)")
@format_option(REPORT_FORMATS)
@pass_cli_context
def usage(
    context: CliContext, by: str, key_name: str | None, since: dt.datetime | None, until: dt.datetime | None, fmt: str
) -> None:
    """Usage report from the store."""
    first = since.date() if since else None
    last = until.date() if until else None
    emit_rows(context.run(lambda admin: admin.usage(by, first, last, key_name)), fmt)
