"""The store's schema version (`schema_version` in the meta hash), checked by every process before use.

A fresh store is stamped with this code's version. An older one is brought up by the migrations
(migrations.py) in order, each step stamped as it ends. A newer one is refused: this code would
misread what a newer relay wrote, so it must be upgraded first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relay_core.store.client import StoreClient
from relay_core.store.client import StoreError
from relay_core.store.migrations import MIGRATIONS
from relay_core.store.migrations import SCHEMA_VERSION
from relay_core.store.migrations import Migration

logger = logging.getLogger(__name__)

FIELD = "schema_version"
_INIT = ("schema_init",)
_STAMP = ("schema_stamp",)

__all__ = ["SCHEMA_VERSION", "SchemaError", "SchemaVersion"]


class SchemaError(StoreError):
    """The store's schema is newer than this code knows: it cannot be used, like an unreachable store."""


def too_new(found: int, known: int = SCHEMA_VERSION) -> str:
    return f"the store was written by a newer claude-relay (schema {found}); upgrade this relay (it knows {known})"


class SchemaVersion(StoreClient):
    async def schema_version(self) -> int | None:
        """The stamped version, without stamping anything (None: not stamped yet)."""
        value = await self._call(self.redis.hget(self.k_meta, FIELD))
        return int(value) if value else None

    async def check_schema(self, migrations: Sequence[Migration] = MIGRATIONS) -> int:
        """Stamp a fresh store, migrate an older one, refuse a newer one (SchemaError); return the version."""
        current = migrations[-1].version
        records = [self.k_meta, self.k_keys, self.k_accounts, self.k_web_tokens, self.k_alert_hooks]
        found = int(await self._run(_INIT, keys=records, args=[FIELD, current]))
        if found > current:
            raise SchemaError(too_new(found, current))
        for step in migrations:
            if step.version <= found:
                continue
            logger.warning("migrating the store from schema %d to %d: %s", found, step.version, step.summary)
            await step.apply(self)
            found = int(await self._run(_STAMP, keys=[self.k_meta], args=[FIELD, found, step.version]))
        return found

    async def stamp_schema(self, version: int) -> None:
        """Set the version outright (tests; a restore brings the version of its backup)."""
        await self._call(self.redis.hset(self.k_meta, FIELD, str(version)))
