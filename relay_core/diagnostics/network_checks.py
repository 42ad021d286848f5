"""Active checks: the upstreams and OAuth endpoint answer, the listening port is the relay's or free.

The probes are plain GETs that carry no Anthropic credential (through an account's proxy, only that
proxy's own credentials).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from relay_core import outbound
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.masking import MASK
from relay_core.masking import masked_url
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.presence import RelayRecord
from relay_core.settings import Settings

REACH_TIMEOUT_S = 5.0
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class Target:
    what: str  # "upstream" or "oauth"
    url: str
    proxy: str | None
    setting: bool = field(default=True, compare=False)  # the URL is the relay's setting, not an account's base URL


def probe_settings(shell: Settings, relays: list[RelayRecord]) -> list[Settings]:
    """The settings whose endpoints doctor probes: the running relays' (upstream and OAuth token URLs, unless
    masked: a password in them is not known here), else this shell's. What a relay works with is not FAIL
    because the shell that asks names another upstream."""
    found: list[Settings] = []
    for relay in relays:
        upstream = relay.settings.get("upstream_url") or shell.upstream_url
        token_url = relay.settings.get("oauth.token_url") or shell.oauth.token_url
        if MASK in upstream or MASK in token_url:
            continue
        probed = shell.model_copy(
            update={"upstream_url": upstream, "oauth": shell.oauth.model_copy(update={"token_url": token_url})}
        )
        if all((p.upstream_url, p.oauth.token_url) != (upstream, token_url) for p in found):
            found.append(probed)
    return found or [shell]


def targets(settings: Settings, accounts: list[Account]) -> dict[Target, list[str]]:
    """Every endpoint the relay would talk to for its enabled accounts, with the accounts that use it."""
    found: dict[Target, list[str]] = {}
    for account in accounts:
        if not account.enabled:
            continue
        google = account.kind in (AccountKind.GEMINI_API_KEY, AccountKind.GEMINI_OAUTH)
        default_base = settings.upstream_url
        if google:
            gemini = settings.gemini
            default_base = gemini.api_url if account.kind is AccountKind.GEMINI_API_KEY else gemini.code_assist_url
        base = (account.base_url or default_base).rstrip("/")
        found.setdefault(Target("upstream", base, account.proxy, not account.base_url), []).append(account.name)
        if account.refreshable:
            token_url = settings.gemini.token_url if google else settings.oauth.token_url
            found.setdefault(Target("oauth", token_url, account.proxy), []).append(account.name)
    if not found:
        found[Target("upstream", settings.upstream_url, None)] = []
    return found


async def reach(target: Target, users: list[str], timeout: float = REACH_TIMEOUT_S) -> Check:
    """One GET without any credential: any HTTP answer means the endpoint is reachable."""
    name = f"{target.what} {masked_url(target.url)}" + (f" via {masked_url(target.proxy)}" if target.proxy else "")
    used_by = f"; used by {', '.join(users)}" if users else ""
    url = target.url + "/v1/models" if target.what == "upstream" else target.url
    parts = urlsplit(url)
    if "@" in parts.netloc:  # credentials in a URL are not sent (and an error might quote them)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    where = "RELAY_OAUTH__TOKEN_URL" if target.what == "oauth" else "RELAY_UPSTREAM_URL or the account's --base-url"
    fix = f"check DNS, firewall, {where}" + (", and the account's --proxy" if target.proxy else "")
    started = time.perf_counter()
    try:
        response = await outbound.send(target.proxy, "GET", url, {"user-agent": "claude-relay-doctor"}, None, timeout)
        status = response.status_code
    except (outbound.OutboundError, ValueError) as exc:
        return Check(name, Level.FAIL, f"unreachable: {exc}{used_by}", fix)
    took = (time.perf_counter() - started) * 1000
    if target.proxy and status in (407, 502, 503, 504):
        return Check(name, Level.FAIL, f"the proxy answered HTTP {status}{used_by}", "check the account's --proxy")
    return Check(name, Level.OK, f"answers (HTTP {status} to a GET without credentials, {took:.0f} ms){used_by}")


def listen_check(settings: Settings) -> Check:
    """The relay's port: a relay answers there, or it is free for `relay serve`."""
    host, port = settings.listen_host, settings.listen_port
    name = f"listen {settings.listen}"
    if port == 0:
        return Check(name, Level.OK, "any free port")
    peer = _LOOPBACK.get(host, host)
    try:
        with socket.create_connection((peer, port), timeout=1):
            taken = True
    except OSError:
        taken = False
    if not taken:
        return _bindable(name, host, port)
    url = f"http://{f'[{peer}]' if ':' in peer else peer}:{port}/health"
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=3) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError:
        status, body = 0, b""
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not isinstance(health, dict) or "store" not in health:
        return Check(name, Level.FAIL, "taken by something that is not the relay", "stop it, or set RELAY_LISTEN")
    if status != 200:
        return Check(name, Level.FAIL, f"a relay answers but reports store {health.get('store')}", "see its log")
    return Check(name, Level.OK, "a relay answers there (store ok)")


def _bindable(name: str, host: str, port: int) -> Check:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return Check(
            name, Level.FAIL, f"cannot listen there: {exc.strerror or exc}", "set RELAY_LISTEN to a local address"
        )
    return Check(name, Level.OK, "free: no relay runs, `relay serve` can listen there")
