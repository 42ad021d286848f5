"""Stored records. Each is kept as one JSON value in a store hash, so one read returns all of them."""

from __future__ import annotations

import fnmatch
import time
import uuid
from enum import StrEnum

from pydantic import BaseModel
from pydantic import Field


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class LimitWindow(BaseModel):
    """At most `requests` requests and/or `tokens` tokens per fixed window of `seconds` (aligned to the epoch)."""

    seconds: int = Field(ge=1)
    requests: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)


class KeyLimits(BaseModel):
    """Every limit is optional; an empty KeyLimits allows everything."""

    windows: list[LimitWindow] = Field(default_factory=list)
    budgets_nanousd: dict[str, int] = Field(default_factory=dict, description="period -> USD x 1e9")
    models_allow: list[str] = Field(default_factory=list, description="glob patterns; empty: every model")
    models_deny: list[str] = Field(default_factory=list, description="glob patterns")
    claude_code_only: bool = False
    expires_at: float | None = None
    expires_after_days: int | None = Field(None, ge=1, description="counted from the key's first use")

    @property
    def charged_at_completion(self) -> bool:
        """Budgets and token windows must see a request's cost before the key's next request is admitted."""
        return bool(self.budgets_nanousd) or any(w.tokens for w in self.windows)

    def model_allowed(self, model: str) -> bool:
        if any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models_deny):
            return False
        return not self.models_allow or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models_allow)


class TeamKey(BaseModel):
    id: str = Field(default_factory=new_id)
    name: str
    key_hash: str
    hint: str = Field(description="first characters of the key, enough to recognise it, not to use it")
    enabled: bool = True
    note: str = ""
    concurrency: int | None = Field(None, ge=1, description="most requests in flight at once")
    account_id: str | None = Field(None, description="bound to this one account")
    group: str | None = Field(None, description="bound to the accounts of this group")
    limits: KeyLimits = Field(default_factory=KeyLimits)
    allow_other_clients: bool = Field(
        False, description="may use subscription accounts from clients that are not Claude Code (the owner pays)"
    )
    created_at: float = Field(default_factory=time.time)


class AccountKind(StrEnum):
    OAUTH = "oauth"  # a Claude subscription
    CONSOLE = "console"  # an Anthropic API key
    GEMINI_API_KEY = "gemini-api-key"  # a Gemini API key (Gemini CLI's API-key method)
    GEMINI_OAUTH = "gemini-oauth"  # a Google account on Code Assist (Gemini CLI's sign-in method)


class Account(BaseModel):
    id: str = Field(default_factory=new_id)
    name: str
    kind: AccountKind
    priority: int = Field(50, description="higher is tried first")
    weight: int = Field(1, ge=1)
    groups: list[str] = Field(default_factory=list)
    base_url: str | None = None
    enabled: bool = True
    sealed_secret: str = Field(description="OAuth access token or API key, sealed with the server secret")
    sealed_refresh_token: str | None = None
    expires_at: float | None = Field(None, description="access-token expiry, epoch seconds")
    user_message_queue: bool | None = Field(None, description="rate lock on/off; None: the global setting")
    proxy: str | None = Field(None, description="outbound HTTP proxy, http://host:port (credentials sealed apart)")
    sealed_url_credentials: dict[str, str] = Field(
        default_factory=dict, description="base_url/proxy -> its user:pass, sealed (relay_core.account_urls)"
    )
    email: str | None = None
    organization: str | None = None
    scopes: list[str] = Field(default_factory=list)
    refreshed_at: float | None = Field(None, description="when the access token was last refreshed")
    project: str | None = Field(None, description="Code Assist: the Google Cloud project the account works in")
    signin_ends_at: float | None = Field(
        None, description="fixed end of the OAuth sign-in (refresh_token_expires_in); refreshing does not move it"
    )
    allow_extra_usage: bool = Field(
        False, description="keep serving while the subscription bills extra usage (default: plan limits only)"
    )
    allow_other_clients: bool = Field(
        False, description="serve clients that are not Claude Code on this subscription (billed as extra usage)"
    )
    pause_at: float | None = Field(
        None,
        gt=0,
        le=1,
        description="subscription quota (0-1) at which the account takes no new sessions until the window resets",
    )
    max_concurrency: int | None = Field(None, ge=1, description="most requests in flight at once, across relays")
    rpm: int | None = Field(None, ge=1, description="most requests sent in any 60 s (sliding), across relays")
    created_at: float = Field(default_factory=time.time)

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @property
    def refreshable(self) -> bool:
        return self.kind in (AccountKind.OAUTH, AccountKind.GEMINI_OAUTH) and self.sealed_refresh_token is not None

    def due_refresh(self, now: float, margin_s: float) -> bool:
        return self.refreshable and self.expires_at is not None and self.expires_at - margin_s <= now

    def serves_client(self, key: TeamKey, claude_code: bool) -> bool:
        """Subscriptions serve Claude Code; other clients only where an admin allowed it, knowingly."""
        return claude_code or self.kind is not AccountKind.OAUTH or self.allow_other_clients or key.allow_other_clients

    def queues_human_turns(self, globally_enabled: bool) -> bool:
        """The rate lock applies to subscription accounts unless the account says otherwise."""
        if self.user_message_queue is not None:
            return self.user_message_queue
        return globally_enabled and self.kind is AccountKind.OAUTH
