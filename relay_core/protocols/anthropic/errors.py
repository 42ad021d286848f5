"""The Messages API's error envelope, so clients handle the relay's refusals natively."""

from __future__ import annotations

import json

from relay_core.errors import RelayError


def error_body(error: RelayError, request_id: str) -> bytes:
    return json.dumps(
        {
            "type": "error",
            "error": {"type": error.error_type, "message": error.message},
            "request_id": request_id,
        }
    ).encode()


def error_frame(error: RelayError) -> bytes:
    """The same error as an SSE `error` event, for failures after a stream has begun."""
    payload = json.dumps({"type": "error", "error": {"type": error.error_type, "message": error.message}})
    return f"event: error\ndata: {payload}\n\n".encode()


def error_type(body: bytes | None) -> str:
    """The `error.type` of an error body, or `unknown`."""
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return "unknown"
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else "unknown"
