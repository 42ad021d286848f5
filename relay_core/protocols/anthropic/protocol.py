"""The Anthropic Messages API (what Claude Code speaks), as the relay's `ApiProtocol`."""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.errors import RelayError
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols.anthropic import errors
from relay_core.protocols.anthropic import health
from relay_core.protocols.anthropic import opening
from relay_core.protocols.anthropic import request_body
from relay_core.protocols.anthropic import routes
from relay_core.protocols.anthropic import upstream
from relay_core.protocols.anthropic import usage
from relay_core.protocols.anthropic.request_body import MessageRequest
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.protocols.anthropic.sse import SseUsageMeter
from relay_core.protocols.base import ApiProtocol
from relay_core.protocols.base import ParsedRequest
from relay_core.protocols.base import RequestRoute
from relay_core.protocols.base import StreamOpening
from relay_core.sessions import session_from_body
from relay_core.settings import Settings
from relay_core.usage import TokenUsage

TELEMETRY_ANSWER = (200, b'{"success":true}', {"content-type": "application/json"})


class AnthropicProtocol(ApiProtocol):
    name = "anthropic"
    key_hint = "Set ANTHROPIC_AUTH_TOKEN (or ANTHROPIC_API_KEY) to your relay team key."

    def serves(self, route: RequestRoute, kind: AccountKind) -> bool:
        return kind in (AccountKind.OAUTH, AccountKind.CONSOLE)

    def default_base_url(self, route: RequestRoute, settings: Settings) -> str:
        return settings.upstream_url

    def body_session(self, message: ParsedRequest) -> str | None:
        return session_from_body(message.body)

    def classify(self, method: str, path: str) -> AnthropicRoute | None:
        return routes.classify(method, path)

    def answer_locally(self, route: RequestRoute) -> tuple[int, bytes, dict[str, str]] | None:
        return TELEMETRY_ANSWER if route is AnthropicRoute.TELEMETRY else None

    def parse_request(self, raw: bytes, route: RequestRoute, path: str) -> MessageRequest:
        return request_body.parse_message_request(raw)

    def is_dropped(self, header: str) -> bool:
        return upstream.is_dropped(header)

    def upstream_headers(
        self, account: Account, secret: str, client_headers: Mapping[str, str], settings: Settings
    ) -> dict[str, str]:
        """The credential, the OAuth beta merged into the client's list, and a default `anthropic-version`."""
        headers = upstream.credential_headers(
            account, secret, client_headers.get("anthropic-beta"), settings.oauth_beta
        )
        if "anthropic-version" not in client_headers:
            headers["anthropic-version"] = settings.anthropic_version
        return headers

    def stream_meter(self, content_encoding: str) -> SseUsageMeter:
        return SseUsageMeter(content_encoding)

    def stream_opening(self, head: bytes) -> StreamOpening | None:
        return opening.stream_opening(head)

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
        return health.judge(status, headers, body, kind, rules, allow_extra_usage=allow_extra_usage)

    def error_body(self, error: RelayError, request_id: str) -> bytes:
        return errors.error_body(error, request_id)

    def error_frame(self, error: RelayError) -> bytes:
        return errors.error_frame(error)

    def error_type(self, body: bytes | None) -> str:
        return errors.error_type(body)
