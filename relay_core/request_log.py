"""The one line per request an operator greps: who, which account, what it cost, how long. No secrets."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from relay_core.flow_state import FlowState

REQUEST_LOGGER = "relay.requests"  # the logger's name, which every line shows


def request_fields(state: FlowState, status: int, error: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": state.request_id,
        "route": state.route.value,
        "key": state.key_label,
        "account": state.account.name if state.account else None,
        "model": state.usage.model if state.usage else state.request_model,
        "status": status,
        "ms": round((time.time() - state.started) * 1000),
    }
    if state.usage is not None:
        usage = state.usage.usage
        fields.update(
            input=usage.input_tokens,
            output=usage.output_tokens,
            cache_read=usage.cache_read_input_tokens,
            cache_write=usage.cache_creation_input_tokens,
            cost_usd=float(state.usage.cost_usd) if state.usage.cost_usd is not None else None,
        )
        if state.usage.partial:
            fields["partial"] = True
    if state.failed_accounts:  # the accounts that failed this request before `account` answered it
        fields["failed_over"] = ",".join(state.failed_account_names)
    if error:
        fields["error"] = error
    return fields


# A text value is printed bare only when it cannot start another field or line; else JSON-quoted, which
# escapes control characters (a model name with "\n" must not forge a request line) and non-ASCII.
_BARE = re.compile(r"[A-Za-z0-9._:/@+\-\[\]]+")
_PLAIN_TYPES = frozenset({int, float, bool})  # their str() is always bare: digits, ".", "-", "e", "inf", "True"


def format_line(fields: dict[str, Any], style: str) -> str:
    if style == "json":
        return json.dumps(fields, separators=(",", ":"))
    return " ".join(f"{name}={_text_value(value)}" for name, value in fields.items() if value is not None)


def _text_value(value: Any) -> str:
    if type(value) in _PLAIN_TYPES:
        return str(value)
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)
