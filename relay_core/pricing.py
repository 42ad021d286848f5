"""USD cost of one response: genai-prices for known models, the configured table for the rest."""

from __future__ import annotations

import logging
from decimal import Decimal

from genai_prices import extract_usage

from relay_core.usage import TokenUsage

logger = logging.getLogger(__name__)

_PER_MILLION = Decimal(1_000_000)
_OVERRIDE_FIELDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
}


def normalise_model(model: str) -> str:
    """Claude Code may show a `[1m]` suffix on a model id; prices ignore it."""
    return model.removesuffix("[1m]").strip()


def price_usd(model: str, usage: TokenUsage, overrides: dict[str, dict[str, float]]) -> Decimal | None:
    """Cost in USD, or None when the model is unknown to both genai-prices and the overrides."""
    model = normalise_model(model)
    table = overrides.get(model)
    if table is not None:
        return sum(
            (Decimal(str(table.get(key, 0))) * getattr(usage, attr) / _PER_MILLION)
            for key, attr in _OVERRIDE_FIELDS.items()
        ) or Decimal(0)
    try:
        extracted = extract_usage({"model": model, "usage": usage.as_api_usage()}, provider_id="anthropic")
        return extracted.calc_price().total_price
    except LookupError:
        logger.warning("no price known for model %r; add it to price_overrides", model)
        return None
