"""`relay backup` / `relay restore`: the store's snapshot (relay_core/store/snapshot.py) as a file.

The file is JSON lines: a header (format, schema version, prefix, when, the server secret's
fingerprint), then one line per key with its PTTL and base64 DUMP payload. It never holds the server
secret: team keys are stored as keyed hashes and account tokens sealed with it, so a backup restores
only next to the secret it was made with (data_dir/secret.key or RELAY_SECRET_KEY), which must be kept
with it.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay_core.admin.errors import AdminError
from relay_core.crypto import SECRET_FILE_NAME
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.store.schema import SCHEMA_VERSION
from relay_core.store.schema import too_new
from relay_core.store.snapshot import DumpedKey

FORMAT = "claude-relay-backup"
FORMAT_VERSION = 1


class BackupError(AdminError):
    """The backup cannot be written or restored here; the message says why and what to do."""


def secret_source(settings: Settings) -> str:
    """Where the server secret of these settings lives, for messages."""
    return "RELAY_SECRET_KEY" if settings.secret_key else str(settings.data_dir / SECRET_FILE_NAME)


@dataclass(frozen=True)
class BackupHeader:
    schema_version: int
    prefix: str
    created_at: str
    secret_fingerprint: str
    keys: int
    relay_version: str = ""

    def record(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}


async def write_backup(runtime: Runtime, path: Path) -> BackupHeader:
    """Snapshot every key under the prefix into `path` (mode 0600, written whole or not at all).
    The caller has checked the store (schema, secret) first."""
    store = runtime.store
    dumped = await store.snapshot()
    header = BackupHeader(
        schema_version=await store.schema_version() or SCHEMA_VERSION,
        prefix=runtime.settings.key_prefix,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        secret_fingerprint=runtime.keyring.fingerprint,
        keys=len(dumped),
        relay_version=importlib.metadata.version("claude-relay"),
    )
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(header.record()) + "\n")
            for d in dumped:
                line = {"key": d.name, "pttl_ms": d.pttl_ms, "dump": base64.b64encode(d.payload).decode()}
                out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return header


def read_backup(path: Path) -> tuple[BackupHeader, list[DumpedKey]]:
    """The header and keys of a backup file; BackupError for anything that is not one this code can restore."""
    try:
        with open(path, encoding="utf-8") as source:
            lines = [json.loads(line) for line in source if line.strip()]
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read backup {path}: {exc}") from None
    if not lines or lines[0].get("format") != FORMAT:
        raise BackupError(f"{path} is not a claude-relay backup")
    first = lines[0]
    if first.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{path} has backup format {first.get('format_version')}; this relay reads {FORMAT_VERSION}")
    try:
        header = BackupHeader(**{k: v for k, v in first.items() if k not in ("format", "format_version")})
        dumped = [DumpedKey(r["key"], int(r["pttl_ms"]), base64.b64decode(r["dump"])) for r in lines[1:]]
    except (TypeError, KeyError, ValueError) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None
    if len(dumped) != header.keys:
        raise BackupError(f"{path} is truncated: {len(dumped)} of {header.keys} keys")
    return header, dumped


def check_restorable(header: BackupHeader, runtime: Runtime) -> None:
    """Refuse what would restore into a broken store: a newer schema, another prefix, another secret."""
    settings = runtime.settings
    if header.schema_version > SCHEMA_VERSION:
        raise BackupError(too_new(header.schema_version).replace("the store", "the backup"))
    if header.prefix != settings.key_prefix:
        raise BackupError(
            f"the backup holds key prefix {header.prefix!r} and this relay uses {settings.key_prefix!r}: "
            f"set RELAY_KEY_PREFIX={header.prefix} (key_prefix) to restore it"
        )
    if header.secret_fingerprint != runtime.keyring.fingerprint:
        raise BackupError(
            f"the server secret ({secret_source(settings)}, fingerprint {runtime.keyring.fingerprint}) is not the "
            f"one this backup was made with (fingerprint {header.secret_fingerprint}): put the secret file kept "
            "with the backup in place first; without it no team key authenticates and no account token decrypts"
        )


async def restore_backup(runtime: Runtime, path: Path, force: bool) -> BackupHeader:
    """Write the backup's keys into an empty prefix (or over every key of it, `force`), then bring its schema
    up to this code's. The store is not checked beforehand: that would stamp it, and it must stay empty."""
    header, dumped = read_backup(path)
    check_restorable(header, runtime)
    held = await runtime.store.restore_snapshot(dumped, replace=force)
    if held and not force:
        raise BackupError(
            f"the store already holds {held} keys under prefix {runtime.settings.key_prefix!r}: restore only "
            "into an empty store, or pass --force to replace every one of them"
        )
    await runtime.check_secret()  # migrates an older schema; the secret matched the header
    return header
