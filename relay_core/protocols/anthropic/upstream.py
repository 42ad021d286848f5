"""How a client request becomes a Messages API request: which headers go, which credential comes in."""

from __future__ import annotations

import functools

from relay_core.models import Account
from relay_core.models import AccountKind

# Client credentials and proxy/CDN hints never leave the relay. `connection` stays: mitmproxy reads
# it to honour a client's `connection: close`.
_DROPPED = frozenset(
    {
        "authorization",
        "x-api-key",
        "proxy-authorization",
        "cookie",
        "proxy-connection",
        "upgrade",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "accept-encoding",
    }
)
_DROPPED_PREFIXES = ("x-forwarded-", "cf-", "x-relay-")


@functools.lru_cache(maxsize=512)  # asked for every header of every request; the names recur
def is_dropped(header: str) -> bool:
    name = header.lower()
    return name in _DROPPED or name.startswith(_DROPPED_PREFIXES)


def merge_beta(client_value: str | None, required: str) -> str:
    """The client's beta list with `required` added once; client order is kept."""
    seen: list[str] = []
    for item in [*(client_value or "").split(","), required]:
        item = item.strip()
        if item and item not in seen:
            seen.append(item)
    return ",".join(seen)


def credential_headers(account: Account, secret: str, client_beta: str | None, oauth_beta: str) -> dict[str, str]:
    """Headers to set upstream for this account (always after dropping the client's own)."""
    headers = {"accept-encoding": "identity"}
    if account.kind is AccountKind.OAUTH:
        headers["authorization"] = f"Bearer {secret}"
        headers["anthropic-beta"] = merge_beta(client_beta, oauth_beta)
    else:
        headers["x-api-key"] = secret
    return headers
