"""Google's error envelope, so Gemini CLI handles the relay's refusals as it handles Google's own.

Gemini CLI 0.61.0 sorts a 429 by its `details` (classifyGoogleError in its bundle): a RetryInfo delay of
at most 300 s is waited out and retried; a longer one ends the run at once, with the message and
"Suggested retry after". So a refusal worth retrying soon carries its short delay, and a final one a
delay over that bound (the real wait when known). The message never says "exhausted your capacity": with
that text the CLI keeps retrying, sleeping out any delay.
"""

from __future__ import annotations

import json
from typing import Any

from relay_core.errors import RelayError

DOMAIN = "claude-relay"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
MAX_CLIENT_WAIT_S = 300  # Gemini CLI retries after a RetryInfo delay up to this; a longer one is final
FINAL_WAIT_S = 3600  # the delay a final refusal names when its real wait is not known
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
        wait = error.retry_after
        final = error.should_retry is False or (wait is not None and wait > MAX_CLIENT_WAIT_S)
        if final:
            wait = max(wait or FINAL_WAIT_S, MAX_CLIENT_WAIT_S + 1)
        info = {"relay_error_type": error.error_type}
        reason = "QUOTA_EXHAUSTED" if final else "RATE_LIMIT_EXCEEDED"
        details.append({"@type": ERROR_INFO, "reason": reason, "domain": DOMAIN, "metadata": info})
        if wait is not None:
            details.append({"@type": RETRY_INFO, "retryDelay": f"{int(wait)}s"})
    elif error.retry_after is not None and error.should_retry is not False:
        details.append({"@type": RETRY_INFO, "retryDelay": f"{int(error.retry_after)}s"})
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
