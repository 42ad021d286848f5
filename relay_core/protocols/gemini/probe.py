"""One tiny real request on a Gemini account (`relay accounts test`): a one-token answer from its own API."""

from __future__ import annotations

import json
import time
from typing import Any

from relay_core import outbound
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.probe import PROBE_TIMEOUT_S
from relay_core.probe import ProbeResult
from relay_core.protocols.gemini.upstream import credential_headers
from relay_core.settings import Settings

DEFAULT_MODEL = "gemini-2.5-flash"


async def probe(account: Account, secret: str, settings: Settings, model: str) -> ProbeResult:
    """`account` with its URLs opened; raises OutboundError when no answer comes."""
    request: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": "quota"}]}],
        "generationConfig": {"maxOutputTokens": 1},
    }
    if account.kind is AccountKind.GEMINI_API_KEY:
        base = account.base_url or settings.gemini.api_url
        url = f"{base.rstrip('/')}/v1beta/models/{model}:generateContent"
        body: dict[str, Any] = request
    else:
        url = (account.base_url or settings.gemini.code_assist_url).rstrip("/") + "/v1internal:generateContent"
        body = {"model": model, "project": account.project, "request": request}
    headers = {"content-type": "application/json", **credential_headers(account, secret)}
    started = time.perf_counter()
    try:
        response = await outbound.send(account.proxy, "POST", url, headers, json.dumps(body).encode(), PROBE_TIMEOUT_S)
    except ValueError as exc:
        raise outbound.OutboundError(str(exc)) from None
    latency = (time.perf_counter() - started) * 1000
    return ProbeResult(response.status_code, latency, dict(response.headers), response.content)
