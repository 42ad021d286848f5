"""What the addons learn about one request, kept in `flow.metadata` under one key."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from relay_core.errors import new_request_id
from relay_core.health import AccountHealth
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.protocols.base import ApiProtocol
from relay_core.protocols.base import ParsedRequest
from relay_core.protocols.base import RequestRoute
from relay_core.protocols.base import StreamOpening
from relay_core.protocols.base import UsageMeter
from relay_core.records import UsageRecord

METADATA_KEY = "relay"


@dataclass(slots=True)  # slots: its fields are read and set a few hundred times per request
class FlowState:
    """Set by the addons in chain order; `request_id` also names this request's lease and lock tokens."""

    route: RequestRoute
    protocol: ApiProtocol  # the API the request speaks: everything protocol-specific goes through it
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.time)
    key: TeamKey | None = None
    # the presented key's name once the store identified it, also when it was then refused (over a limit,
    # disabled): refusals are logged and counted under it; `key` is set only for an admitted request
    key_name: str | None = None
    accounts: list[Account] = field(default_factory=list)
    health: dict[str, AccountHealth] = field(default_factory=dict)
    # the client's headers as Auth read them once (lowercase names, repeats joined), without the ones the
    # protocol drops (its credentials among them): what later rules read instead of walking mitmproxy's Headers
    client_headers: dict[str, str] = field(default_factory=dict)
    session: str | None = None
    sticky: str | None = None  # the account the session was bound to
    account: Account | None = None
    message: ParsedRequest | None = None
    claude_code: bool = True  # the request shows Claude Code's signals (relay_core.clients)
    routed: bool = False
    refused: bool = False  # the relay answered itself: nothing upstream to record
    lease: str | None = None  # the key's lease set, while this request holds a concurrency lease
    reservation: tuple[str, str] | None = None  # (reservations, member) while it holds a budget reservation
    account_slot: tuple[str, str] | None = None  # (account leases, token) while it holds a capped account's slot
    lock_account: str | None = None  # the account whose rate lock this request holds
    meter: UsageMeter | None = None
    outcome: Outcome | None = None
    usage: UsageRecord | None = None  # what the Recorder wrote, for the request log
    recorded: bool = False
    timed_out: str | None = None  # the upstream timeout setting that ended this request
    # failover inside the relay (addons/failover.py, addons/failover_stream.py)
    switches_left: int = 0  # more accounts this request may still move on to
    failed_accounts: list[str] = field(default_factory=list)  # ids of the accounts that failed it, in order
    opening: StreamOpening | None = None  # a streamed answer whose first event was an error, held back
    resend: bool = False  # routed anew after a failure: send the request again
    # The client's path (as sent upstream), headers without its credentials, and body, before the first routing.
    client_request: tuple[str, Any, bytes | None] | None = None

    @property
    def key_label(self) -> str | None:
        """The name the log and the metrics show: the admitted key's, else the identified (refused) key's."""
        return self.key.name if self.key is not None else self.key_name

    @property
    def failed_account_names(self) -> list[str]:
        names = {account.id: account.name for account in self.accounts}
        return [names.get(failed, failed) for failed in self.failed_accounts]

    def next_attempt(self, failed: bool = True) -> None:
        """Forget what the failed attempt learned; what the request is, and what it holds, stays. An account
        that failed is never tried again for this request (one whose token was just refreshed may be)."""
        assert self.account is not None
        if failed:
            self.failed_accounts.append(self.account.id)
        self.switches_left -= 1
        self.account = None
        self.routed = False
        self.meter = None
        self.outcome = None
        self.usage = None
        self.recorded = False
        self.opening = None
        self.resend = True

    @property
    def request_model(self) -> str | None:
        return self.message.model if self.message else None
