"""Gemini CLI's APIs (Code Assist and the Gemini API, under `/gemini`), as the relay's `ApiProtocol`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from relay_core.errors import RelayError
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols.base import ApiProtocol
from relay_core.protocols.base import ParsedRequest
from relay_core.protocols.base import RequestRoute
from relay_core.protocols.gemini import errors
from relay_core.protocols.gemini import health
from relay_core.protocols.gemini import routes
from relay_core.protocols.gemini import upstream
from relay_core.protocols.gemini import usage
from relay_core.protocols.gemini.request_body import GeminiRequest
from relay_core.protocols.gemini.request_body import parse_gemini_request
from relay_core.protocols.gemini.request_body import with_project
from relay_core.protocols.gemini.routes import GeminiRoute
from relay_core.protocols.gemini.sse import GeminiStreamMeter
from relay_core.settings import Settings
from relay_core.usage import TokenUsage

# The project Code Assist's set-up calls are told about: every generate call is sent with the project of
# the account that serves it instead.
RELAY_PROJECT = "claude-relay"
_JSON = {"content-type": "application/json"}
_LOCAL_ANSWERS = {
    GeminiRoute.ASSIST_LOAD: {
        "currentTier": {"id": "free-tier", "name": "Gemini Code Assist for individuals"},
        "allowedTiers": [{"id": "free-tier", "isDefault": True}],
        "cloudaicompanionProject": RELAY_PROJECT,
    },
    GeminiRoute.ASSIST_ONBOARD: {
        "name": "operations/claude-relay-onboarded",
        "done": True,
        "response": {"cloudaicompanionProject": {"id": RELAY_PROJECT, "name": RELAY_PROJECT}},
    },
    GeminiRoute.ASSIST_OTHER: {},
}


class GeminiProtocol(ApiProtocol):
    name = "gemini"
    key_hint = "Set GEMINI_API_KEY (Gemini API) or GOOGLE_CLOUD_ACCESS_TOKEN (Code Assist) to your relay team key."

    def classify(self, method: str, path: str) -> GeminiRoute | None:
        return routes.classify(method, path)

    def answer_locally(self, route: RequestRoute) -> tuple[int, bytes, dict[str, str]] | None:
        answer = _LOCAL_ANSWERS.get(route)  # type: ignore[call-overload]
        return None if answer is None else (200, json.dumps(answer).encode(), _JSON)

    def presented_key(self, headers: Mapping[str, str], path: str) -> str | None:
        """`x-goog-api-key` (the Gemini API), `Authorization: Bearer` (Code Assist) or `?key=`."""
        key = headers.get("x-goog-api-key", "").strip()
        return key or super().presented_key(headers, path) or upstream.query_key(path)

    def serves(self, route: RequestRoute, kind: AccountKind) -> bool:
        return isinstance(route, GeminiRoute) and route.account_kind is kind

    def default_base_url(self, route: RequestRoute, settings: Settings) -> str:
        if isinstance(route, GeminiRoute) and route.is_code_assist:
            return settings.gemini.code_assist_url
        return settings.gemini.api_url

    def upstream_path(self, path: str) -> str:
        return upstream.upstream_path(path)

    def upstream_body(self, route: RequestRoute, message: ParsedRequest | None, account: Account) -> bytes | None:
        if route is GeminiRoute.ASSIST_GENERATE and account.project and message is not None:
            return with_project(message.body, account.project)
        return None

    def body_session(self, message: ParsedRequest) -> str | None:
        return message.session if isinstance(message, GeminiRequest) else None

    def parse_request(self, raw: bytes, route: RequestRoute, path: str) -> GeminiRequest:
        assert isinstance(route, GeminiRoute)
        return parse_gemini_request(raw, route, path)

    def is_dropped(self, header: str) -> bool:
        return upstream.is_dropped(header)

    def upstream_headers(
        self, account: Account, secret: str, client_headers: Mapping[str, str], settings: Settings
    ) -> dict[str, str]:
        return upstream.credential_headers(account, secret)

    def stream_meter(self, content_encoding: str) -> GeminiStreamMeter:
        return GeminiStreamMeter(content_encoding)

    def answer_usage(self, body: bytes | None) -> tuple[TokenUsage, str | None]:
        return usage.answer_usage(body)

    def judge_answer(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes | None,
        kind: AccountKind,
        rules: HealthRules,
        *,
        allow_extra_usage: bool = False,
    ) -> Outcome:
        return health.judge(status, headers, body, kind, rules)

    def error_body(self, error: RelayError, request_id: str) -> bytes:
        return errors.error_body(error, request_id)

    def error_frame(self, error: RelayError) -> bytes:
        return errors.error_frame(error)

    def error_type(self, body: bytes | None) -> str:
        return errors.error_type(body)
