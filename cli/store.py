"""`relay store status | stop`: the embedded Valkey of the data dir (nothing to do with a RELAY_REDIS_URL store)."""

from __future__ import annotations

import sys

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_record
from cli.output import format_option
from relay_core.settings import Settings
from relay_core.store.embedded import live_leases
from relay_core.store.embedded import server_pid
from relay_core.store.embedded import socket_path
from relay_core.store.embedded import stop_embedded_store


@click.group()
def store() -> None:
    """The embedded store (used when no RELAY_REDIS_URL is set)."""


def _embedded(context: CliContext) -> Settings:
    settings = context.settings()
    if settings.redis_url:
        raise click.ClickException("the relay uses RELAY_REDIS_URL, not an embedded store; manage that server itself")
    return settings


@store.command("status")
@format_option()
@pass_cli_context
def store_status(context: CliContext, fmt: str) -> None:
    """Whether the data dir's store server runs (exit 1 when it does not). Starts nothing."""
    settings = _embedded(context)
    pid = server_pid(settings.data_dir)
    emit_record(
        {
            "running": pid is not None,
            "pid": pid,
            "users": live_leases(settings.data_dir),  # relays and commands holding it; the last one stops it
            "socket": str(socket_path(settings.data_dir)),
            "data_dir": str(settings.data_dir),
        },
        fmt,
    )
    if pid is None:
        sys.exit(1)


@store.command("stop")
@pass_cli_context
def store_stop(context: CliContext) -> None:
    """Shut the store server down, saving its data. A running relay starts it again within a second.

    Seldom needed: the last relay or command using the store stops it when it ends."""
    settings = _embedded(context)
    if stop_embedded_store(settings.data_dir):
        click.echo("stopped")
    else:
        click.echo("not running")
