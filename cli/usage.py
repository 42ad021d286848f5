"""`relay usage`: tokens, requests, errors and cost, grouped as asked."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from cli.context import run
from cli.output import REPORT_FORMATS
from cli.output import emit_rows
from cli.output import format_option
from relay_core.reports import GROUPS
from relay_core.reports import usage_rows
from relay_core.runtime import Runtime


@click.command()
@click.option("--by", type=click.Choice(GROUPS), default="key", show_default=True)
@click.option("--key", "key_name", default=None, help="only this team key")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None, help="first day (default: 30 days ago)")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="last day (default: today)")
@format_option(REPORT_FORMATS)
def usage(by: str, key_name: str | None, since: dt.datetime | None, until: dt.datetime | None, fmt: str) -> None:
    """Usage report from the store."""

    async def op(runtime: Runtime) -> list[dict[str, Any]]:
        store = runtime.store
        today = dt.datetime.now(store.zone).date()
        last = until.date() if until else today
        first = since.date() if since else last - dt.timedelta(days=30)
        if first > last:
            raise click.BadParameter("--since is after --until")
        keys = {k.id: k.name for k in await store.list_keys()}
        accounts = {a.id: a.name for a in await store.list_accounts()}
        key_id = None
        if key_name is not None:
            found = await store.find_key(key_name)
            if found is None:
                raise click.ClickException(f"no team key named {key_name!r}")
            key_id = found.id
        return usage_rows(await store.usage_cells(first, last), by, keys, accounts, key_id)

    emit_rows(run(op), fmt)
