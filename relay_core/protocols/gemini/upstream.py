"""How a Gemini CLI request becomes a Google request: which headers go, which credential comes in, where."""

from __future__ import annotations

import functools
from urllib.parse import parse_qsl
from urllib.parse import urlencode

from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols.anthropic.upstream import is_dropped as anthropic_dropped
from relay_core.protocols.gemini.routes import PREFIX

# The team key may come in any of these; `x-gemini-api-privileged-user-id` identifies the client's install.
_DROPPED = frozenset({"x-goog-api-key", "x-gemini-api-privileged-user-id", "x-goog-user-project"})


@functools.lru_cache(maxsize=512)  # asked for every header of every request; the names recur
def is_dropped(header: str) -> bool:
    return anthropic_dropped(header) or header.lower() in _DROPPED


def credential_headers(account: Account, secret: str) -> dict[str, str]:
    headers = {"accept-encoding": "identity"}
    if account.kind is AccountKind.GEMINI_API_KEY:
        headers["x-goog-api-key"] = secret
    else:
        headers["authorization"] = f"Bearer {secret}"
    return headers


def upstream_path(path: str) -> str:
    """The client's path without `/gemini` and without a `key` in the query (the team key)."""
    path = path.removeprefix(PREFIX)
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if name != "key"]
    return base + ("?" + urlencode(kept, safe=":$") if kept else "")


def query_key(path: str) -> str | None:
    """The team key given as `?key=` (the Gemini API's own way to pass a key)."""
    _, _, query = path.partition("?")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "key" and value.strip():
            return value.strip()
    return None
