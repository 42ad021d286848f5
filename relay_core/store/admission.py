"""The request path's one round trip: admit a request and find the session's account."""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.health import AccountHealth
from relay_core.limits import Period
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.records import Admission
from relay_core.store.client import StoreClient

_ADMIT = ("now_ms", "admit")

# Parsed records by their stored JSON: every request reads its key and every account, which rarely
# change; a changed record is other bytes, so it is parsed again. The records are shared between
# requests and never changed in place on the request path (admin changes re-read the store).
_PARSED_MAX = 1024
_KEYS: dict[bytes, TeamKey] = {}
_ACCOUNTS: dict[bytes, Account] = {}


def _parsed[Record: (TeamKey, Account)](cache: dict[bytes, Record], model: type[Record], stored: bytes) -> Record:
    record = cache.get(stored)
    if record is None:
        if len(cache) >= _PARSED_MAX:  # records that changed many times: start over
            cache.clear()
        record = cache[stored] = model.model_validate_json(stored)
    return record


class Admissions(StoreClient):
    async def admit(
        self,
        key_hash: str,
        lease_token: str,
        lease_ttl_ms: int,
        session: str | None = None,
        now_periods: Mapping[str, Period] | None = None,
        from_claude_code: bool = True,
    ) -> Admission | None:
        """One round trip: the key and its limits, every account with its health, the key's lease and the
        session's account."""
        ids = [now_periods[p].id if now_periods else "" for p in ("day", "week", "month")]
        prefixes = [
            self.first_use_prefix,
            self.window_prefix,
            self.spend_prefix,
            self.key_leases_prefix,
            self.health_prefix,
            self.sticky_prefix,
            self.window_requests,
            self.window_tokens,
        ]
        found = await self._run(
            _ADMIT,
            keys=[self.k_key_hashes, self.k_keys, self.k_accounts],
            args=[key_hash, lease_token, lease_ttl_ms, session or "", *ids, int(from_claude_code), *prefixes],
        )
        if not found:
            return None
        key_json, account_jsons, lease, healths, sticky, refusal = found
        accounts = [_parsed(_ACCOUNTS, Account, v) for v in account_jsons]
        return Admission(
            key=_parsed(_KEYS, TeamKey, key_json),
            accounts=accounts,
            lease=int(lease),
            health={a.id: _health(flat) for a, flat in zip(accounts, healths, strict=True)},
            sticky=sticky.decode() if sticky else None,
            refusal=[part.decode() if isinstance(part, bytes) else str(part) for part in refusal] if refusal else None,
        )

    async def sticky_account(self, key_id: str, session: str) -> str | None:
        value = await self._call(self.redis.get(self.sticky_key(key_id, session)))
        return value.decode() if value else None


def _health(flat: list[bytes]) -> AccountHealth:
    return AccountHealth.from_fields({flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)})
