"""Where an upstream request goes: an account's base URL, and the proxy (HTTP or SOCKS5) it is reached through."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import unquote
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path_prefix: str


@functools.lru_cache(maxsize=256)  # every request's: a handful of base URLs, each parsed once
def target_of(base_url: str) -> Target:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) base URL: {base_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


PROXY_SCHEMES = ("http", "socks5", "socks5h")
PROXY_SHAPE = "a proxy must look like http://, socks5:// or socks5h://[user:pass@]host:port"


@dataclass(frozen=True)
class Proxy:
    """An account's outbound proxy. socks5 resolves the target's name here, socks5h at the proxy."""

    scheme: str  # one of PROXY_SCHEMES
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def is_socks(self) -> bool:
        return self.scheme != "http"

    @property
    def remote_dns(self) -> bool:
        return self.scheme == "socks5h"

    @property
    def authorization(self) -> str | None:
        """`Basic ...` for Proxy-Authorization (HTTP proxies), when the URL has credentials."""
        if self.username is None:
            return None
        credentials = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(credentials).decode()


def proxy_of(url: str) -> Proxy:
    """An account's outbound proxy: HTTP (CONNECT), or SOCKS5 through the relay's loopback bridge."""
    parts = urlsplit(url.strip())
    if parts.scheme == "https":
        raise ValueError("TLS to the proxy (https://) is not supported; use an http:// proxy, which still tunnels TLS")
    if parts.scheme.startswith("socks") and parts.scheme not in PROXY_SCHEMES:
        raise ValueError(f"{parts.scheme}:// proxies are not supported; use socks5:// or socks5h://")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname or not port:
        raise ValueError(PROXY_SHAPE)
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme != "http" and username is not None and not (username and password):
        raise ValueError("a SOCKS5 proxy's credentials need both a user and a password (socks5://user:pass@host:port)")
    return Proxy(parts.scheme, parts.hostname, port, username, password)
