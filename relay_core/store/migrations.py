"""The ordered migrations of the store's schema: migration N brings a store of schema N-1 to schema N.

Add one when stored data changes shape: append a Migration with the next version and an `apply` that
rewrites the data. Relays start it on their own (relay_core/store/schema.py): several may run the same
step at once, so `apply` must be idempotent (running it twice leaves what running it once did), and a
store mid-way (a crash between `apply` and the stamp) is migrated again from the same step.
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass

from relay_core.store.client import StoreClient


@dataclass(frozen=True)
class Migration:
    version: int  # the schema the store has after this step
    summary: str
    apply: Callable[[StoreClient], Awaitable[None]]


async def _stamp_only(_store: StoreClient) -> None:
    """Stores made before schema versions hold schema-1 data already: nothing to rewrite."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "record the schema version of a store made before versions existed", _stamp_only),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "migrations must be 1..N in order"
