"""The only module that talks to Redis/Valkey.

Every key starts with `{prefix}:` where the braces make the prefix a Redis Cluster hash tag: all keys
share one slot, so they live on one node and every script and pipeline below is a single-node call on
a cluster too. Records are JSON values in a few hashes, so the admission script reads a key and every
account in one round trip, and a usage write is one pipeline. Everything that must be atomic is a Lua
script, never MULTI/WATCH (redis-py's asyncio cluster runs a transaction's commands through a thread
with an event loop of its own), so a single server and a cluster run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.exceptions import RedisError

from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.limits import NANOS_PER_USD
from relay_core.limits import Period
from relay_core.lua import lua
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.records import Admission
from relay_core.records import Charge
from relay_core.records import LockAttempt
from relay_core.records import StickyBinding
from relay_core.records import UsageCell
from relay_core.records import UsageRecord

# KEYS: names, records[, hashes]  ARGV: name, id, json[, hash]
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[4], ARGV[2]) end
return 1
"""

# KEYS: hash  ARGV: field, value. Set a field once; return the value it holds.
_SET_ONCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# KEYS: hash  ARGV: field, the value it was read with, new value. Compare-and-set of one record.
_REPLACE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: key records, key hashes  ARGV: id, json, old hash ('' to keep), new hash
_SAVE_KEY = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[4] then
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
end
return 1
"""

# KEYS: hashes  ARGV: one field per hash. A record and its lookups go together.
_HDEL_EACH = """
for i, h in ipairs(KEYS) do redis.call('HDEL', h, ARGV[i]) end
return 1
"""

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: key hashes, key records, account records
# ARGV: key hash, lease token, lease ttl ms, key tag, session, day id, week id, month id, from Claude Code (1/0)
# Returns false for an unknown key, else {key json, account jsons, lease, account healths, sticky account,
# refusal} where lease is 0 (no concurrency limit), 1 (lease taken) or -1 (limit reached, nothing taken),
# and refusal is false or the limit that refused the request: {'expired'}, {'client'}, {'window', seconds, what,
# retry s} or {'budget', period, spent}. A refused request changes nothing.
_ADMIT = (
    _NOW_MS
    + """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local key = redis.call('HGET', KEYS[2], id)
if not key then return false end
local record = cjson.decode(key)
local limits = record['limits']
local now_s = math.floor(now / 1000)
local refusal = false
local counted = {}
if record['enabled'] and type(limits) == 'table' then
  if type(limits['expires_at']) == 'number' and now_s >= limits['expires_at'] then refusal = {'expired'} end
  if not refusal and limits['claude_code_only'] == true and ARGV[9] ~= '1' then refusal = {'client'} end
  if not refusal and type(limits['expires_after_days']) == 'number' then
    local first_use = ARGV[4] .. ':first_use:' .. id
    redis.call('SET', first_use, now_s, 'NX')
    if now_s >= tonumber(redis.call('GET', first_use)) + limits['expires_after_days'] * 86400 then
      refusal = {'expired'}
    end
  end
  if not refusal and type(limits['windows']) == 'table' then
    for _, w in ipairs(limits['windows']) do
      local seconds = w['seconds']
      local bucket = ARGV[4] .. ':win:' .. id .. ':' .. seconds .. ':' .. math.floor(now_s / seconds)
      local retry = seconds - (now_s % seconds)
      if type(w['requests']) == 'number' then
        if tonumber(redis.call('GET', bucket .. ':r') or '0') >= w['requests'] then
          refusal = {'window', seconds, 'requests', retry}
          break
        end
        counted[#counted + 1] = {bucket .. ':r', seconds}
      end
      if type(w['tokens']) == 'number' and tonumber(redis.call('GET', bucket .. ':t') or '0') >= w['tokens'] then
        refusal = {'window', seconds, 'tokens', retry}
        break
      end
    end
  end
  if not refusal and type(limits['budgets_nanousd']) == 'table' then
    local period_ids = {day = ARGV[6], week = ARGV[7], month = ARGV[8], total = 'all'}
    for period, budget in pairs(limits['budgets_nanousd']) do
      if period_ids[period] then
        local counter = ARGV[4] .. ':spend:' .. id .. ':' .. period .. ':' .. period_ids[period]
        local spent = tonumber(redis.call('GET', counter) or '0')
        if spent >= budget then
          refusal = {'budget', period, tostring(spent)}
          break
        end
      end
    end
  end
end
if refusal then return {key, {}, 0, {}, false, refusal} end
for _, counter in ipairs(counted) do
  redis.call('INCR', counter[1])
  redis.call('EXPIRE', counter[1], counter[2] + 1)
end
local lease = 0
local limit = record['concurrency']
if record['enabled'] and type(limit) == 'number' then
  local leases = ARGV[4] .. ':leases:key:' .. id
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if redis.call('ZCARD', leases) >= limit then
    lease = -1
  else
    redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', leases, ARGV[3])
    lease = 1
  end
end
local accounts = redis.call('HVALS', KEYS[3])
local health = {}
for i, account in ipairs(accounts) do
  health[i] = redis.call('HGETALL', ARGV[4] .. ':health:' .. cjson.decode(account)['id'])
end
local sticky = false
if ARGV[5] ~= '' then sticky = redis.call('GET', ARGV[4] .. ':sticky:' .. id .. ':' .. ARGV[5]) end
return {key, accounts, lease, health, sticky, false}
"""
)

# KEYS: lock  ARGV: owner token. Compare-and-delete, so a late owner never frees a successor's lock.
_RELEASE_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: account health  ARGV: states that may be cleared
_CLEAR_STATE = """
local state = redis.call('HGET', KEYS[1], 'state')
for _, clearable in ipairs(ARGV) do
  if state == clearable then redis.call('HSET', KEYS[1], 'state', 'ok', 'reason', '') return 1 end
end
return 0
"""

# Everything one finished response changes, in one call. KEYS, each part present only when its count
# says so: the usage journal, the usage buckets (the team's, the key's own), the key's counters (spend
# per period, tokens per window), the sticky binding, the key's budget reservations, the account's
# health.  ARGV: the journal entry to remove ('': none), whether to write nothing unless it was there
# (1/0); bucket count B, then per bucket its field count U, ttl s and U field/value pairs; counter count
# C, C amount/ttl s (0: none) pairs; sticky ttl s (0: none), sticky account; the reservation to settle
# ('': none); then, when a health key is given: status, cool family,
# cool until, state, reason, count failure (0/1), failure streak, failure cooldown s, and the rate-limit
# snapshot as field/value pairs.
_RECORD_COMPLETION = """
local k, a = 1, 3
if ARGV[1] ~= '' then
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 and ARGV[2] == '1' then return 0 end
  k = 2
end
local buckets = tonumber(ARGV[a])
a = a + 1
for _ = 1, buckets do
  local fields = tonumber(ARGV[a])
  for i = a + 2, a + 2 * fields, 2 do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[k], ARGV[a + 1])
  k = k + 1
  a = a + 2 + 2 * fields
end
local counters = tonumber(ARGV[a])
for i = 1, counters do
  local at = a + 2 * i - 1
  redis.call('INCRBY', KEYS[k], ARGV[at])
  if tonumber(ARGV[at + 1]) > 0 then redis.call('EXPIRE', KEYS[k], ARGV[at + 1]) end
  k = k + 1
end
a = a + 1 + 2 * counters
if tonumber(ARGV[a]) > 0 then
  redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ARGV[a])
  k = k + 1
end
a = a + 2
if ARGV[a] ~= '' then
  redis.call('ZREM', KEYS[k], ARGV[a])
  k = k + 1
end
a = a + 1
if k > #KEYS then return 1 end
local h = KEYS[k]
local status, family, cool_until, state, reason = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
redis.call('HSET', h, 'last_status', status)
if reason ~= '' then redis.call('HSET', h, 'reason', reason) end
if family ~= '' then
  local field = 'cool:' .. family
  if tonumber(cool_until) > tonumber(redis.call('HGET', h, field) or '0') then
    redis.call('HSET', h, field, cool_until)
  end
end
if state ~= '' then redis.call('HSET', h, 'state', state) end
if ARGV[a + 5] == '1' then
  if redis.call('HINCRBY', h, 'fail_streak', 1) >= tonumber(ARGV[a + 6]) then
    local t = redis.call('TIME')
    redis.call('HSET', h, 'cool:all', tonumber(t[1]) + tonumber(ARGV[a + 7]), 'fail_streak', 0)
  end
elseif tonumber(status) < 400 then
  redis.call('HSET', h, 'fail_streak', 0)
end
for i = a + 8, #ARGV, 2 do redis.call('HSET', h, ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: lease sets...  ARGV: ttl ms, then one token per key
_RENEW_LEASES = (
    _NOW_MS
    + """
for i, leases in ipairs(KEYS) do
  if redis.call('ZADD', leases, 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i + 1]) then
    redis.call('PEXPIRE', leases, ARGV[1])
  end
end
return 1
"""
)

# KEYS: lease set. Live leases (expired ones are dropped first).
_COUNT_LEASES = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: lock  ARGV: token, gap ms, channel, account id. Only the owner releases; the lock becomes a
# gap marker that expires after the minimum gap, and waiters in every relay process are told.
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], 'gap', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

USAGE_METRICS = (
    "requests",
    "errors",
    "partial",
    "estimated",
    "unpriced",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "web_search_requests",
    "cost_nanousd",
)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect(url: str, timeout_s: float, max_connections: int = 200) -> aioredis.Redis | RedisCluster:
    """A client for a Redis/Valkey URL. `redis+cluster://[user:pass@]host:port[,host:port...][?options]`
    (or `rediss+cluster://`) is a Redis Cluster: any one reachable node is enough to find the rest,
    more make start-up survive a node that is down.

    The pool (per node for a cluster) has room for every call Store lets run at once, plus the
    subscription of the rate lock's waiters: Store, not the pool, makes surplus calls wait."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,
        "max_connections": max_connections + 2,
    }
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return aioredis.from_url(url, **options)
    credentials, _, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    netloc = f"{credentials}@{first}" if credentials else first
    nodes = [ClusterNode(host.strip("[]"), int(port)) for host, _, port in (o.rpartition(":") for o in others)]
    base = urlunsplit((CLUSTER_SCHEMES[parts.scheme], netloc, parts.path, parts.query, ""))
    return RedisCluster.from_url(base, startup_nodes=nodes or None, **options)


class StoreError(Exception):
    """The store is unreachable or answered with an error."""


class NameTakenError(Exception):
    pass


class Store:
    def __init__(
        self,
        url: str,
        prefix: str = "relay",
        timezone: str = "UTC",
        timeout_ms: int = 1000,
        max_connections: int = 200,
    ) -> None:
        if not prefix:
            raise ValueError("the key prefix may not be empty: it is the hash tag that keeps every key in one slot")
        self.redis = connect(url, timeout_ms / 1000, max_connections)
        self.timeout_s = timeout_ms / 1000
        self.max_connections = max_connections
        # Calls beyond the pool wait here for a free connection (within the store timeout) instead of
        # failing: redis-py's pools refuse call 101 at once ("Too many connections"), which turned a
        # burst of 500 new streams into 503s. Cheaper than redis-py's blocking pool when uncontended.
        self._slots = asyncio.Semaphore(max_connections)
        self.zone = ZoneInfo(timezone)
        tag = "{" + prefix + "}"
        self.k_keys = f"{tag}:keys"
        self.k_key_names = f"{tag}:key_names"
        self.k_key_hashes = f"{tag}:key_hashes"
        self.k_accounts = f"{tag}:accounts"
        self.k_account_names = f"{tag}:account_names"
        self.k_meta = f"{tag}:meta"
        self.k_usage = f"{tag}:usage"
        self.k_journal = f"{tag}:journal"
        self.k_instances = f"{tag}:instances"
        self.tag = tag
        self.lock_channel = f"{tag}:queue:released"
        self._create = self.redis.register_script(_CREATE)
        self._set_once = self.redis.register_script(_SET_ONCE)
        self._replace = self.redis.register_script(_REPLACE)
        self._save_key = self.redis.register_script(_SAVE_KEY)
        self._hdel_each = self.redis.register_script(_HDEL_EACH)
        self._count_leases = self.redis.register_script(_COUNT_LEASES)
        self._admit = self.redis.register_script(_ADMIT)
        self._renew_leases = self.redis.register_script(_RENEW_LEASES)
        self._record_completion = self.redis.register_script(_RECORD_COMPLETION)
        self._budget_reserve = self.redis.register_script(lua("now_ms", "budget_reserve"))
        self._journal_tick = self.redis.register_script(lua("now_ms", "journal_tick"))
        self._release_owned = self.redis.register_script(_RELEASE_OWNED)
        self._clear_state = self.redis.register_script(_CLEAR_STATE)
        self._lock_acquire = self.redis.register_script(lua("now_ms", "lock_queue", "lock_acquire"))
        self._lock_leave = self.redis.register_script(lua("lock_queue", "lock_leave"))
        self._lock_release = self.redis.register_script(_LOCK_RELEASE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _call(self, awaitable: Any) -> Any:
        """Runs one store call on a free connection and turns every driver failure into StoreError."""
        try:
            if self._slots.locked():
                async with asyncio.timeout(self.timeout_s):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()  # a free slot: taken without suspending
        except BaseException as exc:  # timed out or cancelled while waiting: the call never starts
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            if isinstance(exc, TimeoutError):
                raise StoreError(
                    f"all {self.max_connections} store connections stayed busy for {self.timeout_s:g} s"
                ) from None
            raise
        try:
            return await self._unbounded(awaitable)
        finally:
            self._slots.release()

    @staticmethod
    async def _unbounded(awaitable: Any) -> Any:
        """A call outside the connection slots: the rate lock's long-lived subscription."""
        try:
            return await awaitable
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            raise StoreError(str(exc) or type(exc).__name__) from exc

    async def ping(self) -> bool:
        return bool(await self._call(self.redis.ping()))

    async def claim_secret_fingerprint(self, fingerprint: str) -> str:
        """Record the server secret's fingerprint on first use; return the one the store holds."""
        stored = await self._call(self._set_once(keys=[self.k_meta], args=["secret_fingerprint", fingerprint]))
        return stored.decode()

    # --- team keys -------------------------------------------------------------------------

    async def create_key(self, key: TeamKey) -> None:
        created = await self._call(
            self._create(
                keys=[self.k_key_names, self.k_keys, self.k_key_hashes],
                args=[key.name, key.id, key.model_dump_json(), key.key_hash],
            )
        )
        if not created:
            raise NameTakenError(f"a key named {key.name!r} already exists")

    async def key_by_hash(self, key_hash: str) -> TeamKey | None:
        key_id = await self._call(self.redis.hget(self.k_key_hashes, key_hash))
        value = await self._call(self.redis.hget(self.k_keys, key_id)) if key_id else None
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
        await self._call(
            self._save_key(
                keys=[self.k_keys, self.k_key_hashes],
                args=[key.id, key.model_dump_json(), old_hash or "", key.key_hash],
            )
        )

    async def delete_key(self, key: TeamKey) -> None:
        await self._call(
            self._hdel_each(
                keys=[self.k_keys, self.k_key_names, self.k_key_hashes], args=[key.id, key.name, key.key_hash]
            )
        )

    # --- accounts --------------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        created = await self._call(
            self._create(
                keys=[self.k_account_names, self.k_accounts],
                args=[account.name, account.id, account.model_dump_json()],
            )
        )
        if not created:
            raise NameTakenError(f"an account named {account.name!r} already exists")

    async def list_accounts(self) -> list[Account]:
        values = await self._call(self.redis.hvals(self.k_accounts))
        return sorted((Account.model_validate_json(v) for v in values), key=lambda a: a.name)

    async def find_account(self, name: str) -> Account | None:
        account_id = await self._call(self.redis.hget(self.k_account_names, name))
        if account_id is None:
            return None
        value = await self._call(self.redis.hget(self.k_accounts, account_id))
        return Account.model_validate_json(value) if value else None

    async def get_account(self, account_id: str) -> Account | None:
        value = await self._call(self.redis.hget(self.k_accounts, account_id))
        return Account.model_validate_json(value) if value else None

    async def update_account(self, account_id: str, change: Callable[[Account], None]) -> Account | None:
        """Read-change-write of one account record that loses no concurrent change: optimistic, the write
        only lands if the record is still the one that was read (else read and change again)."""
        while True:
            value = await self._call(self.redis.hget(self.k_accounts, account_id))
            if value is None:
                return None
            account = Account.model_validate_json(value)
            change(account)
            args = [account_id, value, account.model_dump_json()]
            if await self._call(self._replace(keys=[self.k_accounts], args=args)):
                return account

    # --- sign-ins waiting for their pasted code ------------------------------------------------

    def _login(self, name: str) -> str:
        return f"{self.tag}:login:{name}"

    async def save_login(self, name: str, sealed: str, ttl_s: int) -> None:
        await self._call(self.redis.set(self._login(name), sealed, ex=ttl_s))

    async def take_login(self, name: str) -> str | None:
        value = await self._call(self.redis.getdel(self._login(name)))
        return value.decode() if value else None

    # --- single-flight token refresh ---------------------------------------------------------

    def _refresh_lock(self, account_id: str) -> str:
        return f"{self.tag}:refresh:{account_id}"

    async def take_refresh_lock(self, account_id: str, owner: str, ttl_s: int) -> bool:
        return bool(await self._call(self.redis.set(self._refresh_lock(account_id), owner, nx=True, ex=ttl_s)))

    async def release_refresh_lock(self, account_id: str, owner: str) -> None:
        await self._call(self._release_owned(keys=[self._refresh_lock(account_id)], args=[owner]))

    async def refresh_in_progress(self, account_id: str) -> bool:
        return bool(await self._call(self.redis.exists(self._refresh_lock(account_id))))

    async def delete_account(self, account: Account) -> None:
        await self._call(self._hdel_each(keys=[self.k_accounts, self.k_account_names], args=[account.id, account.name]))

    # --- the request path ------------------------------------------------------------------

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
        found = await self._call(
            self._admit(
                keys=[self.k_key_hashes, self.k_keys, self.k_accounts],
                args=[key_hash, lease_token, lease_ttl_ms, self.tag, session or "", *ids, int(from_claude_code)],
            )
        )
        if not found:
            return None
        key_json, account_jsons, lease, healths, sticky, refusal = found
        accounts = [Account.model_validate_json(v) for v in account_jsons]
        return Admission(
            key=TeamKey.model_validate_json(key_json),
            accounts=accounts,
            lease=int(lease),
            health={a.id: _health(flat) for a, flat in zip(accounts, healths, strict=True)},
            sticky=sticky.decode() if sticky else None,
            refusal=[part.decode() if isinstance(part, bytes) else str(part) for part in refusal] if refusal else None,
        )

    async def first_use(self, key_id: str) -> float | None:
        """When the key was first admitted (set by the admission script for keys that expire N days after)."""
        value = await self._call(self.redis.get(f"{self.tag}:first_use:{key_id}"))
        return float(value) if value else None

    def _sticky(self, binding: StickyBinding) -> str:
        return f"{self.tag}:sticky:{binding.key_id}:{binding.session}"

    async def sticky_account(self, key_id: str, session: str) -> str | None:
        value = await self._call(self.redis.get(self._sticky(StickyBinding(key_id, session, 0))))
        return value.decode() if value else None

    def health_key(self, account_id: str) -> str:
        return f"{self.tag}:health:{account_id}"

    async def account_health(self, account_ids: list[str]) -> dict[str, AccountHealth]:
        pipe = self.redis.pipeline(transaction=False)
        for account_id in account_ids:
            pipe.hgetall(self.health_key(account_id))
        results = await self._call(pipe.execute())
        return {
            account_id: AccountHealth.from_fields({k.decode(): v.decode() for k, v in raw.items()})
            for account_id, raw in zip(account_ids, results, strict=True)
        }

    async def reset_health(self, account_id: str) -> None:
        """An admin's word that the account is fine again: clears state, cooldowns and streaks."""
        await self._call(self.redis.delete(self.health_key(account_id)))

    async def set_account_state(self, account_id: str, state: AccountState, reason: str) -> None:
        await self._call(self.redis.hset(self.health_key(account_id), mapping={"state": state.value, "reason": reason}))

    async def clear_account_state(self, account_id: str, states: tuple[AccountState, ...]) -> None:
        """Back to ok, but only from the given states (a refresh does not lift a ban)."""
        await self._call(self._clear_state(keys=[self.health_key(account_id)], args=[s.value for s in states]))

    async def record_completion(
        self,
        account_id: str,
        outcome: Outcome | None,
        rules: HealthRules,
        usage: UsageRecord | None = None,
        retention_days: int = 400,
        sticky: StickyBinding | None = None,
        charge: Charge | None = None,
        reservation: tuple[str, str] | None = None,
        journal_field: str | None = None,
        only_once: bool = False,
    ) -> bool:
        """Everything one finished response changes, in one script call: usage, the key's spend and token
        windows, stickiness, the budget reservation (reservations, member) it settles, account health, and
        its usage journal entry. `only_once`: write nothing unless the entry was still there (False then)."""
        keys: list[str] = [self.k_journal] if journal_field else []
        args: list[str | int | float] = [journal_field or "", int(only_once)]
        buckets = self._usage_fields(usage) if usage is not None else []
        args.append(len(buckets))
        for bucket, fields in buckets:
            keys.append(bucket)
            args += [len(fields) // 2, retention_days * 86400, *fields]
        counters = self._charge_counters(charge) if charge is not None else []
        keys += [counter for counter, _, _ in counters]
        args.append(len(counters))
        for _, amount, ttl_s in counters:
            args += [amount, ttl_s]
        if sticky is not None and sticky.ttl_s > 0 and outcome is not None and outcome.status < 400:
            keys.append(self._sticky(sticky))
            args += [sticky.ttl_s, account_id]
        else:
            args += [0, ""]
        if reservation is not None:
            keys.append(reservation[0])
        args.append(reservation[1] if reservation is not None else "")
        if outcome is not None:
            keys.append(self.health_key(account_id))
            args += [
                outcome.status,
                outcome.cool_family or "",
                outcome.cool_until or 0,
                outcome.new_state.value if outcome.new_state else "",
                outcome.reason,
                int(outcome.count_failure),
                rules.failure_streak,
                rules.failure_cooldown_s,
            ]
            for name, value in outcome.rate_limits.items():
                args += [name, value]
        if not keys:
            return True
        return bool(await self._call(self._record_completion(keys=keys, args=args)))

    async def journal_beat(
        self, instance: str, dead_after_ms: int, entries: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """Journal entries, mark `instance` alive; the entries of instances that stopped beating."""
        flat = await self._call(
            self._journal_tick(
                keys=[self.k_instances, self.k_journal],
                args=[instance, dead_after_ms, *[part for item in entries.items() for part in item]],
            )
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def journal_drop(self, field: str) -> None:
        await self._call(self.redis.hdel(self.k_journal, field))

    def key_leases(self, key_id: str) -> str:
        return f"{self.tag}:leases:key:{key_id}"

    async def renew_leases(self, leases: list[tuple[str, str]], ttl_ms: int) -> None:
        """Push the expiry of live leases (lease set, token) forward: one call for all of them."""
        if leases:
            await self._call(
                self._renew_leases(keys=[name for name, _ in leases], args=[ttl_ms, *[t for _, t in leases]])
            )

    async def release_lease(self, leases: str, token: str) -> None:
        await self._call(self.redis.zrem(leases, token))

    async def count_leases(self, leases: str) -> int:
        """Live leases in a set (expired ones are dropped first)."""
        return int(await self._call(self._count_leases(keys=[leases])))

    # --- budget reservations (relay_core/budget.py) -----------------------------------------------

    def key_reservations(self, key_id: str) -> str:
        return f"{self.tag}:reserved:{key_id}"

    async def reserve_budget(
        self, key: TeamKey, member: str, ttl_ms: int, now_periods: Mapping[str, Period]
    ) -> tuple[str, int, int] | None:
        """Reserve `member` ("token|nanousd") unless spend plus reservations already reach a budget; then
        (period, spent, reserved) of that budget."""
        budgets = [(p, b) for p, b in key.limits.budgets_nanousd.items() if p in now_periods]
        refused = await self._call(
            self._budget_reserve(
                keys=[
                    self.key_reservations(key.id),
                    *[self.spend_key(key.id, p, now_periods[p].id) for p, _ in budgets],
                ],
                args=[member, ttl_ms, *[b for _, b in budgets]],
            )
        )
        if int(refused[0]) == 0:
            return None
        return budgets[int(refused[0]) - 1][0], int(refused[1]), int(refused[2])

    # --- the rate lock (one human turn at a time per account) ---------------------------------

    def queue_lock(self, account_id: str) -> str:
        return f"{self.tag}:queue:{account_id}:lock"

    def queue_waiters(self, account_id: str) -> str:
        return f"{self.tag}:queue:{account_id}:waiters"

    def _queue_keys(self, account_id: str) -> list[str]:
        """KEYS of lock_queue.lua: the lock, then the waiters, the keys' rotation, token -> waiter, last seen."""
        queue = f"{self.tag}:queue:{account_id}"
        return [
            self.queue_lock(account_id),
            self.queue_waiters(account_id),
            f"{queue}:turns",
            f"{queue}:members",
            f"{queue}:seen",
        ]

    async def try_lock(
        self, account_id: str, token: str, ttl_ms: int, forget_after_ms: int, key_id: str = ""
    ) -> LockAttempt:
        """Join the account's queue (or stay in it) and take the lock if it is free and this is the next
        turn: keys take turns round-robin, each key's waiters in arrival order (lock_acquire.lua). A waiter
        that has not asked again for `forget_after_ms` is taken for gone and dropped."""
        acquired, retry_in = await self._call(
            self._lock_acquire(keys=self._queue_keys(account_id), args=[token, ttl_ms, forget_after_ms, key_id])
        )
        return LockAttempt(bool(acquired), int(retry_in))

    async def release_lock(self, account_id: str, token: str, gap_ms: int) -> bool:
        """Owner-checked: a late release never frees a lock someone else holds now."""
        released = await self._call(
            self._lock_release(keys=[self.queue_lock(account_id)], args=[token, gap_ms, self.lock_channel, account_id])
        )
        return bool(released)

    async def leave_queue(self, account_id: str, token: str) -> None:
        await self._call(self._lock_leave(keys=self._queue_keys(account_id), args=[token]))

    async def lock_holder(self, account_id: str) -> str | None:
        value = await self._call(self.redis.get(self.queue_lock(account_id)))
        return value.decode() if value is not None else None

    async def waiting(self, account_id: str) -> int:
        return int(await self._call(self.redis.zcard(self.queue_waiters(account_id))))

    async def watch_lock_releases(self) -> AsyncIterator[str]:
        """Account ids as their rate lock is released, by any relay process (one subscription each)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._unbounded(pubsub.subscribe(self.lock_channel))
            while True:
                message = await self._unbounded(pubsub.get_message(timeout=None))
                if message is not None and message.get("type") == "message":
                    yield message["data"].decode()
        finally:
            with contextlib.suppress(Exception):  # the store may be gone; the caller's error is the one to keep
                await pubsub.aclose()

    def _bucket(self, day: str) -> str:
        return f"{self.k_usage}:{day}"

    def local_time(self, epoch: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(epoch, self.zone)

    def spend_key(self, key_id: str, period: str, period_id: str) -> str:
        return f"{self.tag}:spend:{key_id}:{period}:{period_id}"

    def window_key(self, key_id: str, seconds: int, now: float) -> str:
        return f"{self.tag}:win:{key_id}:{seconds}:{int(now) // seconds}"

    def _charge_counters(self, charge: Charge) -> list[tuple[str, int, int]]:
        """(counter, amount, ttl s or 0) for each budget period and token window the charge adds to."""
        counters = []
        if charge.cost_nanousd:
            for period, current in charge.periods.items():
                counter = self.spend_key(charge.key_id, period, current.id)
                counters.append((counter, charge.cost_nanousd, current.keep_s or 0))
        if charge.tokens:
            now = time.time()
            for seconds in charge.token_windows:
                counters.append((self.window_key(charge.key_id, seconds, now) + ":t", charge.tokens, seconds + 1))
        return counters

    async def key_consumption(self, key: TeamKey, now_periods: Mapping[str, Period]) -> dict[str, Any]:
        """Spend per budget period, use of the current windows, leases in use: what `keys show` prints."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for period, current in now_periods.items():
            pipe.get(self.spend_key(key.id, period, current.id))
        for window in key.limits.windows:
            bucket = self.window_key(key.id, window.seconds, now)
            pipe.get(bucket + ":r")
            pipe.get(bucket + ":t")
        values = [int(v or 0) for v in await self._call(pipe.execute())]
        spend = dict(zip(now_periods, values, strict=False))
        rest = values[len(now_periods) :]
        windows = [
            {"seconds": w.seconds, "requests": rest[2 * i], "tokens": rest[2 * i + 1]}
            for i, w in enumerate(key.limits.windows)
        ]
        return {
            "spend_nanousd": spend,
            "windows": windows,
            "in_flight": await self.count_leases(self.key_leases(key.id)),
        }

    def _key_bucket(self, day: str, key_id: str) -> str:
        return f"{self.k_usage}:{day}:key:{key_id}"

    def _usage_fields(self, record: UsageRecord) -> list[tuple[str, list[str | int]]]:
        """The buckets the record adds to, each with its field/value pairs (zeros left out): the day's
        bucket of the whole team, and the key's own (by model), which its holder reads without the rest."""
        when = self.local_time(record.at)
        team_prefix = f"{when.hour:02d}|{record.key_id}|{record.account_id}|{record.model}|"
        key_prefix = f"{record.model}|"
        counts = record.usage.counters()
        counts.update(
            requests=1,
            errors=int(record.failed),
            partial=int(record.partial),
            estimated=int(record.estimated),
            unpriced=int(record.cost_usd is None),
            cost_nanousd=int((record.cost_usd or Decimal(0)) * NANOS_PER_USD),
        )
        team: list[str | int] = []
        own: list[str | int] = []
        for metric, value in counts.items():
            if value:
                team += [team_prefix + metric, value]
                own += [key_prefix + metric, value]
        day = when.date().isoformat()
        return [(self._bucket(day), team), (self._key_bucket(day, record.key_id), own)]

    async def usage_cells(self, first: dt.date, last: dt.date) -> list[UsageCell]:
        days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self._bucket(day.isoformat()))
        results = await self._call(pipe.execute())
        cells = []
        for day, fields in zip(days, results, strict=True):
            for field, value in fields.items():
                hour, key_id, account_id, model, metric = field.decode().split("|", 4)
                cells.append(UsageCell(day.isoformat(), int(hour), key_id, account_id, model, metric, int(value)))
        return cells

    async def key_usage_cells(self, key_id: str, first: dt.date, last: dt.date) -> list[UsageCell]:
        """One key's usage by day and model, from its own buckets: bounded by its models, whatever the team's."""
        days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self._key_bucket(day.isoformat(), key_id))
        results = await self._call(pipe.execute())
        cells = []
        for day, fields in zip(days, results, strict=True):
            for field, value in fields.items():
                model, metric = field.decode().rsplit("|", 1)
                cells.append(UsageCell(day.isoformat(), 0, key_id, "", model, metric, int(value)))
        return cells

    # --- diagnostics (read-only) ------------------------------------------------------------

    async def secret_fingerprint(self) -> str | None:
        """The fingerprint the store was claimed with, without claiming it (None: a new store)."""
        value = await self._call(self.redis.hget(self.k_meta, "secret_fingerprint"))
        return value.decode() if value else None

    async def server_version(self) -> str:
        info = await self._call(self.redis.info("server"))
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info.get('redis_version', '?')}"


def _health(flat: list[bytes]) -> AccountHealth:
    return AccountHealth.from_fields({flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)})
