"""Team keys: records by id, found by name or by the hash of their secret."""

from __future__ import annotations

from relay_core.models import TeamKey
from relay_core.store.client import NameTakenError
from relay_core.store.client import StoreClient

_CREATE = ("create",)
_SAVE_KEY = ("save_key",)
_HDEL_EACH = ("hdel_each",)


class TeamKeys(StoreClient):
    async def create_key(self, key: TeamKey) -> None:
        created = await self._run(
            _CREATE,
            keys=[self.k_key_names, self.k_keys, self.k_key_hashes],
            args=[key.name, key.id, key.model_dump_json(), key.key_hash],
        )
        if not created:
            raise NameTakenError(f"a key named {key.name!r} already exists")

    async def key_by_hash(self, key_hash: str) -> TeamKey | None:
        key_id = await self._call(self.redis.hget(self.k_key_hashes, key_hash))
        value = await self._call(self.redis.hget(self.k_keys, key_id)) if key_id else None
        return TeamKey.model_validate_json(value) if value else None

    async def key_by_id(self, key_id: str) -> TeamKey | None:
        value = await self._call(self.redis.hget(self.k_keys, key_id))
        return TeamKey.model_validate_json(value) if value else None

    async def list_keys(self) -> list[TeamKey]:
        values = await self._call(self.redis.hvals(self.k_keys))
        return sorted((TeamKey.model_validate_json(v) for v in values), key=lambda k: k.name)

    async def find_key(self, name: str) -> TeamKey | None:
        key_id = await self._call(self.redis.hget(self.k_key_names, name))
        if key_id is None:
            return None
        value = await self._call(self.redis.hget(self.k_keys, key_id))
        return TeamKey.model_validate_json(value) if value else None

    async def save_key(self, key: TeamKey, old_hash: str | None = None) -> None:
        """Write a changed key record; with old_hash, atomically move its lookup to the new hash."""
        await self._run(
            _SAVE_KEY,
            keys=[self.k_keys, self.k_key_hashes],
            args=[key.id, key.model_dump_json(), old_hash or "", key.key_hash],
        )

    async def delete_key(self, key: TeamKey) -> None:
        await self._run(
            _HDEL_EACH, keys=[self.k_keys, self.k_key_names, self.k_key_hashes], args=[key.id, key.name, key.key_hash]
        )

    async def first_use(self, key_id: str) -> float | None:
        """When the key was first admitted (set by the admission script for keys that expire N days after)."""
        value = await self._call(self.redis.get(self.first_use_key(key_id)))
        return float(value) if value else None
