"""What a Google answer says about the account that served it.

A 429 RESOURCE_EXHAUSTED is a quota: the account rests for that model until the reset the error names
(ErrorInfo `quotaResetDelay`, else RetryInfo, else the message's "reset after 8h44m7s"), or briefly when
it is a capacity problem of the model rather than of the account. 401 and a bad API key are a broken
credential; 403 PERMISSION_DENIED a blocked account; 5xx part of a failure streak. Each of these sends
the request to the next account.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from relay_core.health import ALL_MODELS
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.health import model_family
from relay_core.models import AccountKind

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?")
_MESSAGE_RESET = re.compile(r"(?:reset after|resets in)\s+((?:\d+h)?(?:\d+m)?(?:\d+s)?)", re.IGNORECASE)
CAPACITY_REASONS = ("MODEL_CAPACITY_EXHAUSTED",)


def seconds_of(text: Any) -> float | None:
    """`26s`, `0.5s`, `8h44m7s` as seconds."""
    if not isinstance(text, str) or not text:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def error_of(body: bytes | None) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return {}
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = error.get("details")
    return (
        [d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)]
        if isinstance(details, list)
        else []
    )


def quota_reset_s(error: dict[str, Any]) -> float | None:
    for info in _details(error, "ErrorInfo"):
        metadata = info.get("metadata")
        if isinstance(metadata, dict) and (wait := seconds_of(metadata.get("quotaResetDelay"))) is not None:
            return wait
    for info in _details(error, "RetryInfo"):
        if (wait := seconds_of(info.get("retryDelay"))) is not None:
            return wait
    match = _MESSAGE_RESET.search(str(error.get("message", "")))
    return seconds_of(match.group(1)) if match else None


def _quota_model(error: dict[str, Any]) -> str | None:
    for info in _details(error, "ErrorInfo"):
        metadata = info.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("model"), str):
            return str(metadata["model"])
    return None


def _reasons(error: dict[str, Any]) -> set[str]:
    return {str(info.get("reason")) for info in _details(error, "ErrorInfo")}


def judge(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    kind: AccountKind,
    rules: HealthRules,
    now: float | None = None,
) -> Outcome:
    now = time.time() if now is None else now
    outcome = Outcome(status=status)
    if status < 400:
        return outcome
    error = error_of(body)
    message = str(error.get("message") or (body or b"")[:200].decode(errors="replace"))
    outcome.reason = f"{status}: {message}"[:300]
    reasons = _reasons(error)
    if status == 429:
        model = _quota_model(error)
        if reasons & set(CAPACITY_REASONS):
            wait: float = rules.overload_cooldown_s  # the model is busy for everyone, not this account
        else:
            reset = quota_reset_s(error)
            wait = rules.api_key_429_cooldown_s if reset is None else reset
        outcome.cool_family = model_family(model) if model else ALL_MODELS
        outcome.cool_until = now + min(wait, rules.max_cooldown_s)
        outcome.failover = True
    elif status == 401 or (status == 400 and "API_KEY_INVALID" in reasons):
        outcome.new_state = AccountState.UNAUTHORIZED
        outcome.failover = True
    elif status == 403 and not reasons & {"VALIDATION_REQUIRED"}:
        outcome.new_state = AccountState.BLOCKED
        outcome.failover = True
    elif status in (503, 529):
        outcome.cool_family, outcome.cool_until = ALL_MODELS, now + rules.overload_cooldown_s
        outcome.failover = True
    elif status >= 500:
        outcome.count_failure = True
        outcome.failover = True
    return outcome
