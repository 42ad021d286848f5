"""USD cost of one response: genai-prices for known models, the configured table for the rest.

genai-prices resolves its unit registry on every call (~80 µs, the largest share of the relay's own
CPU per response in the profile). A price without tiers is linear in the token counts, so the
relay asks the library once per price in force for the cost of a million tokens of each kind and
sums exact Decimals from then on: the same result, to the last digit (tests compare both ways).
Tiered prices (long-context Sonnet) always go through the library.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import fields
from dataclasses import replace
from decimal import Decimal
from typing import Any

from genai_prices import Usage
from genai_prices import calc_price
from genai_prices import extract_usage
from genai_prices.types import ModelInfo
from genai_prices.types import TieredPrices

from relay_core.usage import TokenUsage

logger = logging.getLogger(__name__)

_PER_MILLION = Decimal(1_000_000)
_COUNTS = tuple(field.name for field in fields(TokenUsage))
_OVERRIDE_FIELDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
}


# Names Gemini CLI's traffic carries that genai-prices knows under another: Code Assist serves the preview
# model as `gemini-3-flash`.
_MODEL_ALIASES = {"gemini-3-flash": "gemini-3-flash-preview"}


def normalise_model(model: str) -> str:
    """Claude Code may show a `[1m]` suffix on a model id, Gemini a `models/` prefix; prices ignore both."""
    model = model.removesuffix("[1m]").strip().removeprefix("models/")
    return _MODEL_ALIASES.get(model, model)


def provider_of(model: str) -> str:
    """genai-prices' provider for a (normalised) model id."""
    return "google" if model.startswith(("gemini", "gemma")) else "anthropic"


def load_prices() -> None:
    """genai-prices loads (and on a fresh install compiles) its price data on first use: ~0.6 s of CPU that
    a relay spends at start rather than inside its first answer."""
    _model_info("claude-sonnet-4-5")


def price_known(model: str, overrides: dict[str, dict[str, float]]) -> bool:
    """Whether the relay can price this model: a request it cannot price must not count as free."""
    model = normalise_model(model)
    return model in overrides or _model_info(model) is not None


def price_usd(model: str, usage: TokenUsage, overrides: dict[str, dict[str, float]]) -> Decimal | None:
    """Cost in USD, or None when the model is unknown to both genai-prices and the overrides."""
    model = normalise_model(model)
    table = overrides.get(model)
    if table is not None:
        return sum(
            (Decimal(str(table.get(key, 0))) * getattr(usage, attr) / _PER_MILLION)
            for key, attr in _OVERRIDE_FIELDS.items()
        ) or Decimal(0)
    info = _model_info(model)
    if info is None:
        _warn_unpriced(model)
        return None
    rates = _linear_rates(model, id(info.get_prices(dt.datetime.now(dt.UTC))))
    if rates is None:
        return library_price_usd(model, usage)
    return sum((rate * getattr(usage, name) for name, rate in rates), Decimal(0))


def library_price_usd(model: str, usage: TokenUsage) -> Decimal:
    """genai-prices' own calculation (raises LookupError for an unknown model)."""
    if provider_of(model) == "google":  # its input count includes the cached tokens; thinking is in output
        counts = Usage(
            input_tokens=usage.input_tokens + usage.cache_read_input_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            output_tokens=usage.output_tokens,
        )
        return calc_price(counts, model, provider_id="google").total_price
    extracted = extract_usage({"model": model, "usage": usage.as_api_usage()}, provider_id="anthropic")
    return extracted.calc_price().total_price


@functools.lru_cache(maxsize=256)
def _warn_unpriced(model: str) -> None:
    """Once per model (while it stays among the recent ones), not once per request."""
    logger.warning("no price known for model %r; add it to price_overrides", model)


@functools.lru_cache(maxsize=256)
def _model_info(model: str) -> ModelInfo | None:
    try:
        if provider_of(model) == "google":
            return calc_price(Usage(), model, provider_id="google").model
        return extract_usage({"model": model, "usage": TokenUsage().as_api_usage()}, provider_id="anthropic").model
    except LookupError:
        return None


@functools.lru_cache(maxsize=256)
def _linear_rates(model: str, price_id: int) -> tuple[tuple[str, Decimal], ...] | None:
    """USD per token of each kind under the price in force (`price_id` changes when it does);
    None when the price has tiers and so is not linear."""
    info = _model_info(model)
    assert info is not None
    price: Any = info.get_prices(dt.datetime.now(dt.UTC))
    if any(isinstance(value, TieredPrices) for value in vars(price).values()):
        return None
    probe = 1_000_000
    return tuple((name, library_price_usd(model, replace(TokenUsage(), **{name: probe})) / probe) for name in _COUNTS)
