"""First-party mode: the rules of the forward-proxy listener (`forward_listen`, issue 21).

Behind `ANTHROPIC_BASE_URL` Claude Code takes the relay for a third-party gateway and leaves out the
first-party betas, the `diagnostics` field and the `cch=` signing value of its billing line. Through an
HTTPS proxy with the default base URL it sends all of them, so the relay also listens as a forward proxy:
a CONNECT to an intercept host (api.anthropic.com) is answered with a certificate of the relay's own CA
and each request inside is relayed exactly as a base-URL request is (its body untouched). A CONNECT to a
host of `forward_allow_hosts` is tunnelled untouched, for a team key in Proxy-Authorization only; every
other CONNECT is refused, and so is any request that did not come through an intercepted tunnel
(absolute-form `GET http://host/`), so the listener is never an open proxy.

Imports no mitmproxy: the addon (addons/forward_proxy.py) asks these functions and applies the answers.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from enum import StrEnum

from relay_core.errors import RelayError
from relay_core.limits import key_expired
from relay_core.protocols import classify
from relay_core.protocols import default_protocol
from relay_core.routes import Route
from relay_core.runtime import Runtime
from relay_core.settings import Settings

HTTPS_PORT = 443
METRICS_PATH = "/metrics"
PROXY_REALM = 'Basic realm="claude-relay"'
RAW_TUNNEL = "relay.raw_tunnel"  # flow.metadata flag of a CONNECT tunnelled untouched (no requests inside)


class Tunnel(StrEnum):
    INTERCEPT = "intercept"  # TLS ended with the relay's CA; each request inside relayed as from the base URL
    PASS = "pass"  # bytes tunnelled untouched (forward_allow_hosts), for a CONNECT with a valid team key
    REFUSE = "refuse"


def normal_host(host: str) -> str:
    """Host names compare lower-case, without a trailing dot or IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_host_port(entry: str, default_port: int = HTTPS_PORT) -> tuple[str, int]:
    """`host` (port 443) or `host:port`; an IPv6 address with a port needs its brackets (`[::1]:8443`)."""
    entry = entry.strip()
    host, port = entry, default_port
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{entry!r} is not host or host:port")
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, text = entry.partition(":")
        if not text.isdigit():
            raise ValueError(f"{entry!r} is not host or host:port")
        port = int(text)
    host = normal_host(host)
    if not host or any(c in host for c in "/ @?#*") or not 0 < port < 65536:
        raise ValueError(f"{entry!r} is not host or host:port")
    return host, port


@dataclass(frozen=True)
class ForwardRules:
    intercept_hosts: frozenset[str]
    allow: frozenset[tuple[str, int]]

    @classmethod
    def from_settings(cls, settings: Settings) -> ForwardRules:
        return cls(
            intercept_hosts=frozenset(normal_host(h) for h in settings.forward_intercept_hosts),
            allow=frozenset(parse_host_port(entry) for entry in settings.forward_allow_hosts),
        )

    def connect(self, host: str, port: int) -> Tunnel:
        """What a CONNECT to host:port gets. An intercept host is intercepted on 443 only: the relay serves
        HTTPS, nothing else, under its name."""
        host = normal_host(host)
        if port == HTTPS_PORT and host in self.intercept_hosts:
            return Tunnel.INTERCEPT
        if (host, port) in self.allow:
            return Tunnel.PASS
        return Tunnel.REFUSE

    def request_refusal(self, host: str, port: int, tls: bool, method: str, path: str) -> RelayError | None:
        """Why a request on the forward listener is not served, or None.

        Served are only requests that came through an intercepted tunnel (TLS from the client, an intercept
        host on 443), and of those only the API's paths: the relay's own endpoints (/health, /metrics, the
        page, /relay/usage) belong to the base-URL listener, and another protocol's paths to its own host.
        """
        if not tls or self.connect(host, port) is not Tunnel.INTERCEPT:
            return RelayError(
                403,
                "permission_error",
                f"The relay's forward proxy relays only HTTPS to {', '.join(sorted(self.intercept_hosts))} "
                f"(CONNECT host:443, then TLS); it does not proxy {host}:{port}.",
            )
        protocol, route = classify(method, path)
        bare = path.split("?", 1)[0]  # a query may carry a key: never echoed
        if bare.rstrip("/") == METRICS_PATH or (
            isinstance(route, Route) and route not in (Route.UNKNOWN, Route.BAD_PATH)
        ):
            return RelayError(404, "not_found_error", f"The relay does not serve {method} {bare} here.")
        if protocol is not default_protocol() and not isinstance(route, Route):
            return RelayError(404, "not_found_error", f"{host} does not serve {method} {bare}.")
        return None


def connect_refused(host: str, port: int, rules: ForwardRules) -> RelayError:
    hosts = ", ".join(sorted(rules.intercept_hosts))
    return RelayError(
        403,
        "permission_error",
        f"The relay's forward proxy does not connect to {host}:{port}: it intercepts {hosts} and tunnels only the "
        "hosts in its forward_allow_hosts setting.",
    )


def tunnel_unauthorized(host: str, port: int) -> RelayError:
    return RelayError(
        407,
        "authentication_error",
        f"Tunnelling to {host}:{port} needs a valid team key in Proxy-Authorization "
        "(Basic with the key as password, as in http://user:KEY@relay:port, or Bearer KEY).",
    )


def proxy_key(value: str | None) -> str | None:
    """The team key in a Proxy-Authorization value: `Bearer KEY`, or `Basic` of `user:KEY` (or of `KEY`
    alone, as `http://KEY@relay:port` sends it)."""
    scheme, _, credentials = (value or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (password if sep and password else user).strip() or None


async def key_is_valid(runtime: Runtime, secret: str) -> bool:
    """A team key that exists, is enabled and has not expired: enough to open a tunnel (which is no request:
    it counts against no limit). May raise StoreError."""
    key = await runtime.store.key_by_hash(runtime.keyring.hash_team_key(secret))
    if key is None or not key.enabled:
        return False
    first_use = await runtime.store.first_use(key.id) if key.limits.expires_after_days else None
    return not key_expired(key, time.time(), first_use)
