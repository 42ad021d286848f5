"""Google's error envelope, so Gemini CLI handles the relay's refusals as it handles Google's own.

The CLI reads `error.status` and `details`: a RetryInfo makes it wait that long and retry, and a 429 with
ErrorInfo reason QUOTA_EXHAUSTED is final. So a refusal the client should retry carries RetryInfo (and
RATE_LIMIT_EXCEEDED, which it retries after the delay), one it should not carries QUOTA_EXHAUSTED; the
message never says "exhausted your capacity" (the CLI then sleeps out any delay, however long).
"""

from __future__ import annotations

import json
from typing import Any

from relay_core.errors import RelayError

DOMAIN = "claude-relay"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}


def google_status(status: int) -> str:
    return _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def error_object(error: RelayError) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error.status == 429:
        reason = "RATE_LIMIT_EXCEEDED" if error.should_retry is not False else "QUOTA_EXHAUSTED"
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": DOMAIN,
                "metadata": {"relay_error_type": error.error_type},
            }
        )
    if error.retry_after is not None and error.should_retry is not False:
        delay = f"{int(error.retry_after)}s"
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    body: dict[str, Any] = {"code": error.status, "message": error.message, "status": google_status(error.status)}
    if details:
        body["details"] = details
    return {"error": body}


def error_body(error: RelayError, request_id: str) -> bytes:
    return json.dumps(error_object(error)).encode()


def error_frame(error: RelayError) -> bytes:
    """The same error as an SSE event, for failures after a stream has begun (the CLI reads a bare error)."""
    return f"data: {json.dumps(error_object(error))}\r\n\r\n".encode()


def error_type(body: bytes | None) -> str:
    """The `error.status` of a Google error body (bare, or in the array streams use), or `unknown`."""
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return "unknown"
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    status = error.get("status") if isinstance(error, dict) else None
    return status if isinstance(status, str) else "unknown"
