"""One tiny real request on an account, the way Claude Code probes its quota at startup."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from relay_core import outbound
from relay_core.models import Account
from relay_core.protocols.anthropic.upstream import credential_headers
from relay_core.settings import Settings

UNIFIED = "anthropic-ratelimit-unified-"
PROBE_TIMEOUT_S = 30
LIMIT_PREFIX = "limit_"  # distinct from the probe's own fields (`status` is the HTTP status, never a window's)


@dataclass
class ProbeResult:
    status: int
    latency_ms: float
    headers: dict[str, str]
    body: bytes

    def limits(self) -> dict[str, str]:
        """Every unified rate-limit header of the answer as `limit_<name>` (`limit_5h_utilization`, ...).

        All of them, not only those the scheduler reads: their semantics are undocumented and new ones
        (overage, fallback, grace) appear, so an admin checking an account should see whatever came."""
        return {
            LIMIT_PREFIX + name.removeprefix(UNIFIED).replace("-", "_"): value
            for name, value in sorted(self.headers.items())
            if name.startswith(UNIFIED)
        }


async def probe(account: Account, secret: str, settings: Settings, model: str) -> ProbeResult:
    """`account` with its URLs opened (account_urls.opened); raises OutboundError when no answer comes."""
    body = json.dumps({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]})
    headers = {
        "content-type": "application/json",
        "anthropic-version": settings.anthropic_version,
        "user-agent": settings.oauth.user_agent,
        **credential_headers(account, secret, None, settings.oauth_beta),
    }
    url = (account.base_url or settings.upstream_url).rstrip("/") + "/v1/messages"
    started = time.perf_counter()
    try:
        response = await outbound.send(account.proxy, "POST", url, headers, body.encode(), PROBE_TIMEOUT_S)
    except ValueError as exc:  # a proxy URL the relay cannot use
        raise outbound.OutboundError(str(exc)) from None
    latency = (time.perf_counter() - started) * 1000
    headers_seen = {name.lower(): value for name, value in response.headers.items()}
    return ProbeResult(response.status_code, latency, headers_seen, response.content)
