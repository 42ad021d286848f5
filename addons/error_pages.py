"""Errors that mitmproxy answers itself (upstream unreachable, malformed HTTP) in Anthropic's envelope.

mitmproxy writes those answers as HTML from one function of its HTTP/1 layer and offers no hook to
change them, so this addon replaces that function when it loads. Claude Code and the SDKs then see
an error they parse and retry, and no upstream address leaks into the message.
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http
from mitmproxy import version
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from relay_core.errors import new_request_id

logger = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 504: "timeout_error"}


def anthropic_error_response(status_code: int, message: str = "") -> bytes:
    if status_code >= 500:
        text = "The relay could not get an answer from the upstream; retrying may use another account."
    else:
        text = f"The relay could not read this request: {message.split(' (', 1)[0]}"
    request_id = new_request_id()
    error_type = ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": error_type, "message": text}, "request_id": request_id}
    response = http.Response.make(
        status_code,
        json.dumps(body).encode(),
        http.Headers(
            Server=version.MITMPROXY,
            Connection="close",
            Content_Type="application/json",
            Request_Id=request_id,
            X_Should_Retry="true" if status_code >= 500 else "false",
        ),
    )
    return http1.assemble_response(response)


class AnthropicErrorPages:
    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        _http1.make_error_response = anthropic_error_response
