"""`relay usage`: tokens, requests, errors and cost, grouped as asked."""

from __future__ import annotations

import datetime as dt

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import REPORT_FORMATS
from cli.output import emit_table
from cli.output import format_option
from cli.tables import default_usage_sort
from cli.tables import table_options
from cli.tables import usage_columns
from cli.tables import usage_totals
from relay_core.reports import GROUPS


@click.command()
@click.option("--by", type=click.Choice(GROUPS), default="key", show_default=True)
@click.option("--key", "key_name", default=None, help="only this team key")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None, help="first day (default: 30 days ago)")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="last day (default: today)")
@format_option(REPORT_FORMATS)
@table_options
@pass_cli_context
def usage(
    context: CliContext,
    by: str,
    key_name: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    fmt: str,
    sort: str | None,
    wide: bool,
) -> None:
    """Usage report from the store. The table also lists keys without usage, and a totals row."""
    first = since.date() if since else None
    last = until.date() if until else None
    table = fmt == "table"
    rows = context.run(lambda admin: admin.usage(by, first, last, key_name, every_key=table))
    totals = usage_totals(rows, by) if table and rows else None
    emit_table(rows, fmt, usage_columns(by), sort or default_usage_sort(by), wide, totals)
