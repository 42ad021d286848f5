"""Who may see what on the page: signing in with a team key or a web token, and re-checking a session.

A sign-in stores a random session id's keyed hash (never the id, never the key) with a TTL; the
browser keeps the id in an HttpOnly cookie. Every page view looks the key or token up again, so a
key disabled, expired or rotated, or a token revoked, after the sign-in loses access at once. Secrets
are compared only as keyed hashes looked up in the store (no early-exit string comparison).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from relay_core.limits import key_expired
from relay_core.models import TeamKey
from relay_core.runtime import Runtime
from relay_core.web.records import Viewer
from relay_core.web.records import WebSession
from relay_core.web.records import WebToken

logger = logging.getLogger(__name__)

COOKIE_NAME = "relay_session"
MAX_SECRET_LENGTH = 256  # team keys and web tokens are 46 characters; anything far longer is not one
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


class Refusal(StrEnum):
    REFUSED = "refused"  # wrong, disabled or expired: the page does not say which
    TOO_MANY = "too_many"  # the client address made too many attempts this minute


@dataclass(frozen=True)
class Visitor:
    """A signed-in visitor, as re-checked for this view: a key's holder (key) or an admin (token)."""

    viewer: Viewer
    key: TeamKey | None = None
    token: WebToken | None = None


@dataclass(frozen=True)
class SignedIn:
    session_id: str  # goes into the cookie only
    visitor: Visitor


class PageAccess:
    def __init__(self, runtime: Runtime) -> None:
        self.store = runtime.store
        self.keyring = runtime.keyring
        self.settings = runtime.settings

    async def sign_in(self, secret: str, client: str) -> SignedIn | Refusal:
        """One attempt, counted against the client address whatever its outcome."""
        now = time.time()
        if await self.store.count_sign_in(client, now) > self.settings.page_sign_ins_per_minute:
            logger.warning("page sign-in refused: too many attempts from %s", client)
            return Refusal.TOO_MANY
        secret = secret.strip()
        visitor = await self._visitor_for_secret(secret, now) if 0 < len(secret) <= MAX_SECRET_LENGTH else None
        if visitor is None:
            logger.info("page sign-in refused from %s", client)
            return Refusal.REFUSED
        session_id = secrets.token_urlsafe(32)
        subject = visitor.key.id if visitor.key else visitor.token.id if visitor.token else ""
        session = WebSession(viewer=visitor.viewer, subject_id=subject)
        await self.store.save_web_session(
            self.keyring.hash_web_secret(session_id), session, self.settings.page_session_ttl_s
        )
        who = visitor.key.name if visitor.key else visitor.token.name if visitor.token else "?"
        logger.info("page sign-in: %s %r from %s", visitor.viewer.value, who, client)
        return SignedIn(session_id, visitor)

    async def visitor(self, session_id: str | None) -> Visitor | None:
        """The session's visitor if the session and its key or token are still good."""
        if not session_id or not SESSION_ID.match(session_id):
            return None
        session = await self.store.web_session(self.keyring.hash_web_secret(session_id))
        if session is None:
            return None
        if session.viewer is Viewer.ADMIN:
            token = await self.store.web_token(session.subject_id)
            return Visitor(Viewer.ADMIN, token=token) if token is not None else None
        key = await self.store.key_by_id(session.subject_id)
        return Visitor(Viewer.KEY, key=key) if key is not None and await self._usable(key, time.time()) else None

    async def sign_out(self, session_id: str | None) -> None:
        if session_id and SESSION_ID.match(session_id):
            await self.store.drop_web_session(self.keyring.hash_web_secret(session_id))

    async def _visitor_for_secret(self, secret: str, now: float) -> Visitor | None:
        key = await self.store.key_by_hash(self.keyring.hash_team_key(secret))
        if key is not None:
            return Visitor(Viewer.KEY, key=key) if await self._usable(key, now) else None
        token = await self.store.web_token_by_hash(self.keyring.hash_web_secret(secret))
        return Visitor(Viewer.ADMIN, token=token) if token is not None else None

    async def _usable(self, key: TeamKey, now: float) -> bool:
        """The rules the relay applies to the key's requests: enabled, and not expired."""
        if not key.enabled:
            return False
        first_use = await self.store.first_use(key.id) if key.limits.expires_after_days else None
        return not key_expired(key, now, first_use)
