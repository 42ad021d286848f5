"""`relay backup FILE` / `relay restore FILE`: a consistent snapshot of the store, and putting it back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from cli.context import CliContext
from cli.context import click_error
from cli.context import pass_cli_context
from relay_core.admin.backup import BackupHeader
from relay_core.admin.backup import restore_backup
from relay_core.admin.backup import secret_source
from relay_core.admin.backup import write_backup
from relay_core.admin.errors import AdminError
from relay_core.crypto import SECRET_FILE_NAME
from relay_core.runtime import SecretMismatchError
from relay_core.store import StoreError

KEEP_THE_SECRET = (
    "The backup does not hold the server secret: keep {secret} with it. Without that secret every team key "
    "and account in the backup is lost."
)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@pass_cli_context
def backup(context: CliContext, file: Path) -> None:
    """Write every key of the store (its prefix) to FILE, read in one consistent snapshot.

    Safe while relays run. The file holds hashes of team keys and sealed account tokens, never the
    server secret: keep the secret (data_dir/secret.key or RELAY_SECRET_KEY) with the backup."""
    header = context.run(lambda admin: write_backup(admin.runtime, file))
    click.echo(
        f"wrote {header.keys} keys to {file} (prefix {header.prefix!r}, schema {header.schema_version}, "
        f"secret fingerprint {header.secret_fingerprint})"
    )
    click.echo(KEEP_THE_SECRET.format(secret=secret_source(context.settings())))


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace every key the store already holds under the prefix")
@pass_cli_context
def restore(context: CliContext, file: Path, force: bool) -> None:
    """Put the keys of a `relay backup` FILE into an empty store (stop the relays first).

    The server secret the backup was made with must be in place (data_dir/secret.key, or
    RELAY_SECRET_KEY): the fingerprint in the file is checked against it. An older schema is migrated."""
    settings = context.settings()
    secret_file = settings.data_dir / SECRET_FILE_NAME
    if not settings.secret_key and not secret_file.exists():
        raise click.ClickException(
            f"no server secret at {secret_file}: copy the secret file kept with the backup there (or set "
            "RELAY_SECRET_KEY) first; without it every team key and account in the backup is lost"
        )
    runtime = context.open_runtime()

    async def main() -> BackupHeader:
        try:
            return await restore_backup(runtime, file, force)
        finally:
            await runtime.store.close()
            runtime.release_store()

    try:
        header = asyncio.run(main())
    except AdminError as exc:
        raise click_error(exc) from exc
    except (StoreError, SecretMismatchError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"restored {header.keys} keys from {file} (made {header.created_at} by claude-relay "
        f"{header.relay_version or '?'}, schema {header.schema_version})"
    )
    click.echo(KEEP_THE_SECRET.format(secret=secret_source(settings)))
