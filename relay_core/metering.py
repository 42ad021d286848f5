"""Turning what a response showed into one usage record."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from zoneinfo import ZoneInfo

from relay_core.flow_state import FlowState
from relay_core.limits import NANOS_PER_USD
from relay_core.limits import periods
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.pricing import price_known
from relay_core.pricing import price_usd
from relay_core.protocols.base import UsageMeter
from relay_core.records import Charge
from relay_core.records import UsageRecord
from relay_core.usage import TokenUsage

CHARS_PER_TOKEN = 4
BODY_BYTES_PER_TOKEN = 4


# Model ids without a price a process records under their own name; any further ones share one name, so a
# key holder sending made-up models cannot grow the usage buckets, reports and metrics without bound.
UNPRICED_MODELS_KEPT = 50
OTHER_UNPRICED_MODEL = "other-unpriced"
_unpriced_kept: set[str] = set()


def _clean_model(model: str | None, overrides: dict[str, dict[str, float]]) -> str:
    name = (model or "unknown").replace("|", "_")[:120]
    if name in _unpriced_kept or price_known(name, overrides):
        return name
    if len(_unpriced_kept) < UNPRICED_MODELS_KEPT:
        _unpriced_kept.add(name)
        return name
    return OTHER_UNPRICED_MODEL


def estimated_input_tokens(body_bytes: int) -> int:
    """Input tokens of a request whose answer never showed its usage: one per 4 bytes of the JSON request body
    (at least 1). English text runs about 4 characters a token; JSON punctuation, base64 images (billed by
    their pixels) and a cached prompt (priced here as uncached input) make it an overcount, which is the
    side to err on for a request the upstream may have billed."""
    return max(1, body_bytes // BODY_BYTES_PER_TOKEN)


def _estimate_unreported(usage: TokenUsage, received_bytes: int) -> bool:
    """An answer that showed no usage at all, for a request the upstream received: charge its input."""
    if received_bytes <= 0 or not usage.is_empty():
        return False
    usage.input_tokens = estimated_input_tokens(received_bytes)
    return True


def record_from_stream(
    state: FlowState,
    meter: UsageMeter,
    status: int,
    complete: bool,
    overrides: dict[str, dict[str, float]],
    received_bytes: int = 0,
) -> UsageRecord:
    """A stream's usage; when it was cut before `message_delta`, output is estimated from the text, and when it
    showed none at all, input from the request (`received_bytes`: the body the upstream received, 0 when the
    answer is an error the upstream does not bill, or the request never reached it)."""
    usage = replace(meter.usage)  # a copy: a stream still running may be recorded again at its end
    estimated = False
    if meter.saw_message_start and not meter.saw_message_delta and meter.output_chars:
        usage.output_tokens = max(usage.output_tokens, meter.output_chars // CHARS_PER_TOKEN)
        estimated = True
    if meter.error is None:  # an `error` event is the upstream saying it failed, which it does not bill
        estimated |= _estimate_unreported(usage, received_bytes)
    model = _clean_model(meter.model or state.request_model, overrides)
    return _record(
        state,
        model,
        usage,
        overrides,
        failed=status >= 400 or meter.error is not None,
        partial=not complete,
        estimated=estimated,
    )


def record_from_body(
    state: FlowState,
    body: bytes | None,
    status: int,
    overrides: dict[str, dict[str, float]],
    received_bytes: int = 0,
) -> UsageRecord:
    """A buffered answer's usage (`received_bytes` as for `record_from_stream`)."""
    usage, answered_model = state.protocol.answer_usage(body)
    model = answered_model if answered_model is not None else state.request_model
    estimated = _estimate_unreported(usage, received_bytes)
    return _record(state, _clean_model(model, overrides), usage, overrides, failed=status >= 400, estimated=estimated)


def _record(
    state: FlowState,
    model: str,
    usage: TokenUsage,
    overrides: dict[str, dict[str, float]],
    *,
    failed: bool,
    partial: bool = False,
    estimated: bool = False,
) -> UsageRecord:
    assert state.key is not None and state.account is not None
    return UsageRecord(
        at=time.time(),
        key_id=state.key.id,
        account_id=state.account.id,
        model=model,
        usage=usage,
        cost_usd=price_usd(model, usage, overrides) if not usage.is_empty() else Decimal(0),
        failed=failed,
        partial=partial,
        estimated=estimated,
        quota=state.account.kind is AccountKind.GEMINI_OAUTH,
    )


def token_windows(key: TeamKey) -> tuple[int, ...]:
    return tuple(w.seconds for w in key.limits.windows if w.tokens)


def charge_of(key: TeamKey, usage: UsageRecord, zone: ZoneInfo) -> Charge:
    return charge_for(usage, token_windows(key), zone)


def charge_for(usage: UsageRecord, windows: tuple[int, ...], zone: ZoneInfo) -> Charge:
    """What a response costs its key. Tokens counted against token windows: all input (cached or not) and output."""
    tokens = usage.usage
    return Charge(
        key_id=usage.key_id,
        periods=periods(usage.at, zone),
        cost_nanousd=int((usage.cost_usd or Decimal(0)) * NANOS_PER_USD),
        tokens=tokens.input_tokens
        + tokens.cache_read_input_tokens
        + tokens.cache_creation_input_tokens
        + tokens.output_tokens,
        token_windows=windows,
    )
