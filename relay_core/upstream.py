"""Where an upstream request goes: an account's base URL, and the HTTP proxy it is reached through."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote
from urllib.parse import urlsplit


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
