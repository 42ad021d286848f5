"""How a client request becomes an upstream request: which headers go, which credential comes in."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

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


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path_prefix: str


def target_of(base_url: str) -> Target:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) base URL: {base_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))
