"""`relay keys`: team keys. The secret is shown once, at creation or rotation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from cli.context import run
from cli.output import emit_record
from cli.output import emit_rows
from cli.output import format_option
from relay_core.models import TeamKey
from relay_core.runtime import Runtime


def key_view(key: TeamKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "key": key.hint + "…",
        "enabled": key.enabled,
        "concurrency": key.concurrency,
        "note": key.note,
        "created": dt.datetime.fromtimestamp(key.created_at, dt.UTC).isoformat(timespec="seconds"),
    }


async def _require(runtime: Runtime, name: str) -> TeamKey:
    key = await runtime.store.find_key(name)
    if key is None:
        raise click.ClickException(f"no team key named {name!r} (see `relay keys list`)")
    return key


def _issue(runtime: Runtime) -> tuple[str, str, str]:
    secret = runtime.keyring.new_team_key()
    return secret, runtime.keyring.hash_team_key(secret), secret[:7]


def _show_secret(secret: str, view: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        emit_record({**view, "key": secret}, fmt)
    else:
        emit_record(view, fmt)
        click.echo(f"\nkey: {secret}\nThis is the only time the key is shown; give it to its owner now.")


@click.group()
def keys() -> None:
    """Team keys: one per person."""


@keys.command()
@click.argument("name")
@click.option("--note", default="", help="free text, e.g. the owner")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="most requests in flight at once")
@format_option()
def create(name: str, note: str, concurrency: int | None, fmt: str) -> None:
    """Create a key and print its secret once."""

    async def op(runtime: Runtime) -> tuple[str, TeamKey]:
        secret, key_hash, hint = _issue(runtime)
        key = TeamKey(name=name, key_hash=key_hash, hint=hint, note=note, concurrency=concurrency)
        await runtime.store.create_key(key)
        return secret, key

    secret, key = run(op)
    _show_secret(secret, key_view(key), fmt)


@keys.command("list")
@format_option()
def list_keys(fmt: str) -> None:
    """All keys (never their secrets)."""
    emit_rows([key_view(k) for k in run(lambda rt: rt.store.list_keys())], fmt)


@keys.command()
@click.argument("name")
@format_option()
def show(name: str, fmt: str) -> None:
    """One key."""

    async def op(runtime: Runtime) -> TeamKey:
        return await _require(runtime, name)

    emit_record(key_view(run(op)), fmt)


def _set_enabled(name: str, enabled: bool) -> None:
    async def op(runtime: Runtime) -> None:
        key = await _require(runtime, name)
        key.enabled = enabled
        await runtime.store.save_key(key)

    run(op)
    click.echo(f"key {name} {'enabled' if enabled else 'disabled'}")


@keys.command()
@click.argument("name")
@click.option("--note", default=None, help="free text, e.g. the owner")
@click.option("--concurrency", type=click.IntRange(min=0), default=None, help="most requests in flight; 0: no limit")
@format_option()
def update(name: str, note: str | None, concurrency: int | None, fmt: str) -> None:
    """Change a key's note or limits."""

    async def op(runtime: Runtime) -> TeamKey:
        key = await _require(runtime, name)
        if note is not None:
            key.note = note
        if concurrency is not None:
            key.concurrency = concurrency or None
        await runtime.store.save_key(key)
        return key

    emit_record(key_view(run(op)), fmt)


@keys.command()
@click.argument("name")
def enable(name: str) -> None:
    """Let the key be used again."""
    _set_enabled(name, True)


@keys.command()
@click.argument("name")
def disable(name: str) -> None:
    """Refuse the key (401) until enabled again."""
    _set_enabled(name, False)


@keys.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def delete(name: str, yes: bool) -> None:
    """Delete the key for good (its usage history stays)."""
    if not yes:
        click.confirm(f"Delete key {name}?", abort=True)

    async def op(runtime: Runtime) -> None:
        await runtime.store.delete_key(await _require(runtime, name))

    run(op)
    click.echo(f"key {name} deleted")


@keys.command()
@click.argument("name")
@format_option()
def rotate(name: str, fmt: str) -> None:
    """Replace the key's secret; the old one stops working at once."""

    async def op(runtime: Runtime) -> tuple[str, TeamKey]:
        key = await _require(runtime, name)
        old_hash = key.key_hash
        secret, key.key_hash, key.hint = _issue(runtime)
        await runtime.store.save_key(key, old_hash=old_hash)
        return secret, key

    secret, key = run(op)
    _show_secret(secret, key_view(key), fmt)
