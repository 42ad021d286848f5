"""What the relay reads from a Gemini request: the model (from the path on the Gemini API, from the body on
Code Assist) and whether the answer streams."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay_core.errors import RelayError
from relay_core.protocols.anthropic.request_body import MODEL_ID
from relay_core.protocols.anthropic.request_body import parse_json_body
from relay_core.protocols.gemini.routes import GeminiRoute
from relay_core.protocols.gemini.routes import api_model
from relay_core.protocols.gemini.routes import is_stream_call
from relay_core.sessions import clean_session


@dataclass(frozen=True)
class GeminiRequest:
    model: str
    stream: bool
    body: dict[str, Any]

    @property
    def is_human_turn(self) -> bool:
        """Never queued: the rate lock is about Claude subscriptions."""
        return False

    @property
    def session(self) -> str | None:
        """Gemini CLI's session id (Code Assist puts it in the wrapped request): keeps a session on one account."""
        inner = self.body.get("request")
        return clean_session(inner.get("session_id")) if isinstance(inner, dict) else None


def invalid(message: str) -> RelayError:
    return RelayError(400, "invalid_request_error", message)


def parse_gemini_request(raw: bytes, route: GeminiRoute, path: str) -> GeminiRequest:
    try:
        body = parse_json_body(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON.") from None
    except RecursionError:
        raise invalid("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    if route.is_code_assist:
        model = body.get("model")
        if route is GeminiRoute.ASSIST_COUNT_TOKENS:
            inner = body.get("request")
            model = inner.get("model") if isinstance(inner, dict) else None
    else:
        model = api_model(path)
    if not isinstance(model, str) or not MODEL_ID.fullmatch(model):
        raise invalid("model: not a model id (up to 200 letters, digits and . _ - : @ / [ ]).")
    return GeminiRequest(model=model.removeprefix("models/"), stream=is_stream_call(path), body=body)


def with_project(body: dict[str, Any], project: str) -> bytes:
    """A Code Assist body (as parsed once, on arrival) sent for the account that serves it: its own Cloud
    project, not the client's."""
    return json.dumps({**body, "project": project}, separators=(",", ":")).encode()
