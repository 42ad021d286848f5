"""Prints rows as a table (people), JSON or CSV (scripts)."""

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
