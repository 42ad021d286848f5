"""Prints rows as a table (people), JSON or CSV (scripts). JSON and CSV print the records as they are;
tables are shaped by cli/tables.py."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import click
from click.decorators import FC
from tabulate import tabulate

from cli.tables import Column
from cli.tables import Row
from cli.tables import render
from cli.tables import render_record
from cli.tables import sort_rows

FORMATS = ("table", "json")
REPORT_FORMATS = ("table", "json", "csv")


def format_option(choices: Sequence[str] = FORMATS) -> Callable[[FC], FC]:
    return click.option("--format", "fmt", type=click.Choice(choices), default="table", show_default=True)


def emit_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif rows:
        click.echo(tabulate(rows, headers="keys"))
    else:
        click.echo("(none)")


def emit_record(record: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
    else:
        click.echo(tabulate(list(record.items()), tablefmt="plain"))


def emit_table(
    rows: list[Row],
    fmt: str,
    columns: Sequence[Column],
    sort: str | None = None,
    wide: bool = False,
    totals: Row | None = None,
) -> None:
    """JSON and CSV: the rows as they are. Table: the named columns, sorted by `sort`, then the totals row."""
    if fmt != "table":
        emit_rows(rows, fmt)
    elif not rows:
        click.echo("(none)")
    else:
        click.echo(render(sort_rows(rows, columns, sort) if sort else rows, columns, wide, totals))


def emit_lines(record: dict[str, Any], fmt: str, lines: Sequence[tuple[str, str]]) -> None:
    """JSON: the record as it is. Table: its readable `label  value` lines."""
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
    else:
        click.echo(render_record(lines))
