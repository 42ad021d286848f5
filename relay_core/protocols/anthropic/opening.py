"""What the first event of a streamed Messages answer says: an answer, or an error sent with a 200.

Anthropic may open a `200 text/event-stream` answer with an `error` event (`overloaded_error` when it
is busy). Nothing has reached the client yet when the relay reads it, so the request can still go to
another account; the error stands for the status the same error would have had as a plain answer.
"""

from __future__ import annotations

import json
import re

from relay_core.protocols.base import StreamOpening

_FIRST_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_OPENING_BYTES = 64 * 1024  # no frame end by then: a large first event, never an error
STATUS_OF_ERROR = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
ANSWER = StreamOpening(200, b"")


def stream_opening(head: bytes) -> StreamOpening | None:
    """The verdict on a stream's first event, or None until that event is complete."""
    end = _FIRST_FRAME_END.search(head)
    if end is None:
        return ANSWER if len(head) > MAX_OPENING_BYTES else None
    event, data = "", []
    for line in head[: end.start()].decode(errors="replace").splitlines():
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    payload = "\n".join(data)
    if event != "error" and '"error"' not in payload:
        return ANSWER
    try:
        parsed = json.loads(payload)
    except ValueError:
        return StreamOpening(500, payload.encode()) if event == "error" else ANSWER
    if not isinstance(parsed, dict) or (event != "error" and parsed.get("type") != "error"):
        return ANSWER
    error = parsed.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return StreamOpening(STATUS_OF_ERROR.get(kind, 500) if isinstance(kind, str) else 500, payload.encode())
