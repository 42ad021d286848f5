"""How a client request becomes an upstream request: which headers go, which credential comes in."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote
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


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # `Basic ...` for Proxy-Authorization, when the URL has credentials


def proxy_of(url: str) -> Proxy:
    """An account's outbound proxy. HTTP proxies only: mitmproxy cannot chain to SOCKS upstreams."""
    parts = urlsplit(url.strip())
    if parts.scheme.startswith("socks"):
        raise ValueError(
            "SOCKS proxies are not supported: mitmproxy can only chain to HTTP proxies. Run an HTTP-to-SOCKS "
            "bridge (e.g. privoxy or gost) next to the relay and give its http:// address."
        )
    if parts.scheme == "https":
        raise ValueError("TLS to the proxy (https://) is not supported; use an http:// proxy, which still tunnels TLS")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or not port:
        raise ValueError("a proxy must look like http://[user:pass@]host:port")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    return Proxy(parts.hostname, port, authorization)
