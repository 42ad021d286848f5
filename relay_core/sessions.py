"""The conversation a request belongs to, so it can stay on one account (and its prompt cache)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

SESSION_HEADER = "x-claude-code-session-id"
LEGACY_USER_ID = re.compile(
    r"^user_(?P<device>[0-9a-fA-F]{64})_account_(?P<account>[^_]*)_session_(?P<session>[0-9a-fA-F-]+)$"
)
MAX_SESSION_LENGTH = 128


def clean_session(session: Any) -> str | None:
    """A session id fit to key a sticky mapping, or None."""
    if not isinstance(session, str):
        return None
    session = session.strip()
    if not session or len(session) > MAX_SESSION_LENGTH or not session.isprintable() or ":" in session:
        return None
    return session


def session_from_headers(headers: Mapping[str, str]) -> str | None:
    return clean_session(headers.get(SESSION_HEADER))


def session_from_body(body: Mapping[str, Any]) -> str | None:
    """`metadata.user_id`: before Claude Code 2.1.78 `user_<device>_account_<uuid>_session_<uuid>`, then JSON."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    legacy = LEGACY_USER_ID.match(user_id)
    if legacy:
        return clean_session(legacy.group("session"))
    try:
        parsed = json.loads(user_id)
    except ValueError:
        return None
    return clean_session(parsed.get("session_id")) if isinstance(parsed, dict) else None
