"""Every key name the store uses, built in one place.

Each name starts with `{prefix}:`: the braces make the prefix a Redis Cluster hash tag, so every key
lives in one slot (one node) and every script and pipeline is a single-node call on a cluster too.
A name derived from a record id is its kind's prefix followed by its parts joined with ':'. The
admission script learns the key id only inside the server, so it gets the prefixes below in ARGV and
appends the parts itself; every other script gets finished names in KEYS.
"""

from __future__ import annotations


class KeyNames:
    """The names of one relay's keys, under one prefix (hash tag)."""

    # the two counters of a window bucket (window_key): requests admitted, tokens charged
    window_requests = ":r"
    window_tokens = ":t"

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("the key prefix may not be empty: it is the hash tag that keeps every key in one slot")
        tag = "{" + prefix + "}"
        self.tag = tag
        self.k_keys = f"{tag}:keys"  # key id -> TeamKey json
        self.k_key_names = f"{tag}:key_names"  # name -> key id
        self.k_key_hashes = f"{tag}:key_hashes"  # secret hash -> key id
        self.k_accounts = f"{tag}:accounts"  # account id -> Account json
        self.k_account_names = f"{tag}:account_names"  # name -> account id
        self.k_meta = f"{tag}:meta"
        self.k_usage = f"{tag}:usage"
        self.k_journal = f"{tag}:journal"
        self.k_instances = f"{tag}:instances"  # live relay processes: instance -> last beat (ms, server clock)
        self.k_relays = f"{tag}:relays"  # instance -> RelayRecord json (relay_core/presence.py)
        self.k_alert_hooks = f"{tag}:alerts:hooks"  # webhook id -> AlertHook json
        self.lock_channel = f"{tag}:queue:released"  # a pub/sub channel, not a key
        self.first_use_prefix = f"{tag}:first_use:"
        self.window_prefix = f"{tag}:win:"
        self.spend_prefix = f"{tag}:spend:"
        self.key_leases_prefix = f"{tag}:leases:key:"
        self.health_prefix = f"{tag}:health:"
        self.sticky_prefix = f"{tag}:sticky:"
        self.k_web_tokens = f"{tag}:web_tokens"  # token id -> WebToken json
        self.k_web_token_names = f"{tag}:web_token_names"  # name -> token id
        self.k_web_token_hashes = f"{tag}:web_token_hashes"  # token hash -> token id

    def first_use_key(self, key_id: str) -> str:
        return f"{self.first_use_prefix}{key_id}"

    def window_key(self, key_id: str, seconds: int, now: float) -> str:
        """The key's bucket of a `seconds` window at `now`: a prefix of its two counters (window_requests, _tokens)."""
        return f"{self.window_prefix}{key_id}:{seconds}:{int(now) // seconds}"

    def spend_key(self, key_id: str, period: str, period_id: str) -> str:
        return f"{self.spend_prefix}{key_id}:{period}:{period_id}"

    def key_leases(self, key_id: str) -> str:
        return f"{self.key_leases_prefix}{key_id}"

    def health_key(self, account_id: str) -> str:
        return f"{self.health_prefix}{account_id}"

    def sticky_key(self, key_id: str, session: str) -> str:
        return f"{self.sticky_prefix}{key_id}:{session}"

    def account_leases(self, account_id: str) -> str:
        """The account's concurrency slots: tokens scored by their expiry, like the key leases."""
        return f"{self.tag}:leases:account:{account_id}"

    def account_requests(self, account_id: str) -> str:
        """The account's requests of the last 60 s (RPM cap): tokens scored by when they were sent."""
        return f"{self.tag}:rpm:account:{account_id}"

    def key_reservations(self, key_id: str) -> str:
        return f"{self.tag}:reserved:{key_id}"

    def alert_claim_key(self, identity: str) -> str:
        """The claim of one event (relay_core/events.py identity): whoever sets it first sends it."""
        return f"{self.tag}:alerts:sent:{identity}"

    def web_session_key(self, session_hash: str) -> str:
        """A signed-in page visitor (WebSession json) under the keyed hash of its cookie's session id."""
        return f"{self.tag}:web_session:{session_hash}"

    def web_sign_in_counter(self, client: str, minute: int) -> str:
        """Sign-in attempts from one client address in one minute."""
        return f"{self.tag}:web_sign_in:{client}:{minute}"

    def login_key(self, name: str) -> str:
        return f"{self.tag}:login:{name}"

    def refresh_lock_key(self, account_id: str) -> str:
        return f"{self.tag}:refresh:{account_id}"

    def quota_poll_lock_key(self, account_id: str) -> str:
        """Held for one poll interval by the relay that polls the account's quota (relay_core/quota.py)."""
        return f"{self.tag}:quota_poll:{account_id}"

    def usage_bucket(self, day: str) -> str:
        """The team's usage of one local day."""
        return f"{self.k_usage}:{day}"

    def key_usage_bucket(self, day: str, key_id: str) -> str:
        """One key's own usage of one local day."""
        return f"{self.k_usage}:{day}:key:{key_id}"

    def queue_lock(self, account_id: str) -> str:
        return f"{self.tag}:queue:{account_id}:lock"

    def queue_waiters(self, account_id: str) -> str:
        return f"{self.tag}:queue:{account_id}:waiters"

    def queue_keys(self, account_id: str) -> list[str]:
        """KEYS of lock_queue.lua: the lock, then the waiters, the keys' rotation, token -> waiter, last seen."""
        queue = f"{self.tag}:queue:{account_id}"
        return [
            self.queue_lock(account_id),
            self.queue_waiters(account_id),
            f"{queue}:turns",
            f"{queue}:members",
            f"{queue}:seen",
        ]
