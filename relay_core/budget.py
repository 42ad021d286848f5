"""Budget reservations: a burst of requests cannot spend past a key's budget by more than one request.

Spend is only known when an answer ends, so a budget checked at admission alone lets every request of a
burst through (200 parallel requests on a $0.01 budget spent $0.21). Each request of a key with a budget
therefore reserves an upper estimate of its cost before it goes upstream; a request is let through only
while spend plus the reservations of the requests in flight is below every budget; completion settles
the reservation into spend in the same store call. The bound: spend never exceeds the budget by more
than the estimate of the one request admitted last (the estimate is an upper bound of what the upstream
bills for the request, unless its answer uses paid server tools).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from relay_core.errors import RelayError
from relay_core.limits import NANOS_PER_USD
from relay_core.limits import Period
from relay_core.limits import refusal_error
from relay_core.limits import usd
from relay_core.models import TeamKey
from relay_core.pricing import normalise_model
from relay_core.pricing import price_usd
from relay_core.pricing import provider_of
from relay_core.protocols.base import ParsedRequest
from relay_core.usage import TokenUsage

# Tokenizers average 3.5-4 bytes of English text per token; JSON structure costs bytes and no tokens. One
# token for every 3 bytes, each priced as a 5-minute cache write (1.25x input), covers the text a request
# can hold (images are billed by their pixels, far below their base64 size).
BODY_BYTES_PER_TOKEN = 3
MAX_TOKENS_CAP = 10_000_000


def estimate_nanousd(message: ParsedRequest, body_bytes: int, overrides: dict[str, dict[str, float]]) -> int:
    """An upper estimate of one request's cost: its whole body as input written to the cache (Gemini: as
    input, its only rate), plus the output bound it names (`max_tokens`, which bounds output and thinking;
    Gemini's `maxOutputTokens` when it gives one). 0 for a model without a price."""
    body_tokens = math.ceil(body_bytes / BODY_BYTES_PER_TOKEN)
    output = min(max(_output_bound(message.body), 0), MAX_TOKENS_CAP)
    if provider_of(normalise_model(message.model)) == "google":
        usage = TokenUsage(input_tokens=body_tokens, output_tokens=output)
    else:
        usage = TokenUsage(cache_write_5m_tokens=body_tokens, output_tokens=output)
    cost = price_usd(message.model, usage, overrides)
    return math.ceil(cost * NANOS_PER_USD) if cost is not None else 0


def _output_bound(body: dict[str, Any]) -> int:
    inner = body.get("request")
    config = (inner if isinstance(inner, dict) else body).get("generationConfig")
    value = config.get("maxOutputTokens") if isinstance(config, dict) else body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def reservation_refused(
    key: TeamKey, period: str, spent: int, reserved: int, now_periods: Mapping[str, Period], now: float
) -> RelayError:
    """Spent out: the budget's 402. Otherwise the rest of the budget is held by requests in flight, which
    may well leave some of it: worth a retry once they end."""
    if reserved <= 0:
        return refusal_error(key, ["budget", period, str(spent)], now_periods, now)
    budget = key.limits.budgets_nanousd.get(period, 0)
    return RelayError(
        429,
        "rate_limit_error",
        f"Team key {key.name!r} has {usd(max(budget - spent, 0))} of its {period} budget of {usd(budget)} left, "
        f"and its requests in flight may use up to {usd(reserved)}. Retry when they have finished.",
        retry_after=1,
        should_retry=True,
    )
