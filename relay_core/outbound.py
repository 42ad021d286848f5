"""HTTP clients for the relay's own outbound calls (OAuth, usage polling, probes, doctor).

One place decides how such a call leaves: direct, through an account's HTTP proxy (CONNECT), or through its
SOCKS5 proxy (socks5: names resolved here; socks5h: at the proxy). Environment proxies are ignored, as for the
proxied messages, so an account's traffic never leaves by another route than its own proxy.
"""

from __future__ import annotations

import httpx
from httpx_socks import AsyncProxyTransport
from python_socks import ProxyError
from python_socks import ProxyTimeoutError
from python_socks import ProxyType

from relay_core.upstream import proxy_of


class OutboundError(Exception):
    """No HTTP answer: the name did not resolve, the connection was refused or timed out, or the proxy said no.

    The message never carries the proxy's credentials."""


def client(proxy_url: str | None, timeout_s: float) -> httpx.AsyncClient:
    """A client that sends every request direct (proxy_url None) or through exactly that proxy.

    Raises ValueError for a proxy URL the relay cannot use (see upstream.proxy_of)."""
    timeout = httpx.Timeout(timeout_s)
    if not proxy_url:
        return httpx.AsyncClient(trust_env=False, timeout=timeout)
    proxy = proxy_of(proxy_url)
    if not proxy.is_socks:
        return httpx.AsyncClient(proxy=proxy_url.strip(), trust_env=False, timeout=timeout)
    transport = AsyncProxyTransport(
        proxy_type=ProxyType.SOCKS5,
        proxy_host=proxy.host,
        proxy_port=proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.remote_dns,  # python-socks resolves remotely unless told False
        trust_env=False,
    )
    return httpx.AsyncClient(transport=transport, trust_env=False, timeout=timeout)


async def send(
    proxy_url: str | None,
    method: str,
    url: str,
    headers: dict[str, str],
    content: bytes | None,
    timeout_s: float,
) -> httpx.Response:
    """One request with its answer read whole; any failure below HTTP becomes an OutboundError.

    Raises ValueError for a proxy URL the relay cannot use, before anything is sent."""
    async with client(proxy_url, timeout_s) as http:
        try:
            return await http.request(method, url, headers=headers, content=content)
        except (httpx.HTTPError, ProxyError, ProxyTimeoutError, OSError) as exc:
            raise OutboundError(_reason(exc, proxy_url)) from None


def _reason(exc: BaseException, proxy_url: str | None) -> str:
    """What went wrong, in words an admin can act on; a proxy's password is masked should a library quote it."""
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | ProxyTimeoutError):
        reason = f"timed out ({reason})" if str(exc) else "timed out"
    elif isinstance(exc, ProxyError):
        reason = f"the SOCKS proxy refused: {reason}"
    if proxy_url:
        password = proxy_of(proxy_url).password
        if password:
            reason = reason.replace(password, "***")
    return reason
