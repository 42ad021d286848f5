"""What the relay needs from a request body, read once; the body itself is forwarded untouched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay_core.errors import RelayError


@dataclass(frozen=True)
class MessageRequest:
    model: str
    stream: bool
    body: dict[str, Any]


def parse_message_request(raw: bytes) -> MessageRequest:
    """Refuse what the upstream would refuse anyway, before spending an upstream call on it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RelayError(400, "invalid_request_error", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RelayError(400, "invalid_request_error", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RelayError(400, "invalid_request_error", "model: Field required (a model id string).")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RelayError(400, "invalid_request_error", "stream: Input should be a valid boolean.")
    return MessageRequest(model=model, stream=stream, body=body)
