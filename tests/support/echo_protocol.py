"""A tiny test-only API protocol, "echo", registered by loading this file as a mitmproxy script next to the bundle.

Requests: `POST /echo/v1/say` with `{"model": ..., "text": ...}`; the upstream answers
`{"model": ..., "said": ..., "tokens": {"in": N, "out": M}}`. The account's secret goes upstream as
`x-echo-key`; errors are `{"echo_error": {"kind": ..., "text": ...}}`. Nothing outside this file knows it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from typing import NamedTuple

from relay_core.errors import RelayError
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols import register
from relay_core.protocols.base import ApiProtocol
from relay_core.protocols.base import RequestRoute
from relay_core.settings import Settings
from relay_core.usage import TokenUsage

NAME = "echo"
CLIENT_CREDENTIALS = frozenset({"authorization", "x-api-key", "x-echo-key"})


class EchoRoute(StrEnum):
    SAY = "echo_say"

    @property
    def is_relayed(self) -> bool:
        return True

    @property
    def is_metered(self) -> bool:
        return True

    @property
    def reads_body(self) -> bool:
        return True


class EchoRequest(NamedTuple):
    model: str
    stream: bool
    body: dict[str, Any]

    @property
    def is_human_turn(self) -> bool:
        return True


class EchoMeter:
    """Echo never streams; the interface still wants a meter. (A mitmproxy script is no module in
    `sys.modules`, so no dataclasses here.)"""

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.model: str | None = None
        self.error: dict[str, Any] | None = None
        self.saw_message_start = False
        self.saw_message_delta = False
        self.output_chars = 0

    def feed(self, chunk: bytes) -> None:
        pass


class EchoProtocol(ApiProtocol):
    name = NAME

    def classify(self, method: str, path: str) -> EchoRoute | None:
        return EchoRoute.SAY if (method, path) == ("POST", "/echo/v1/say") else None

    def serves(self, route: RequestRoute, kind: AccountKind) -> bool:
        return kind is AccountKind.CONSOLE  # the tests' echo accounts are API-key accounts

    def default_base_url(self, route: RequestRoute, settings: Settings) -> str:
        return settings.upstream_url

    def parse_request(self, raw: bytes, route: RequestRoute, path: str) -> EchoRequest:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise RelayError(400, "bad_echo", "an echo request is a JSON object with a model")
        return EchoRequest(model=body["model"], stream=False, body=body)

    def is_dropped(self, header: str) -> bool:
        return header in CLIENT_CREDENTIALS

    def upstream_headers(
        self, account: Account, secret: str, client_headers: Mapping[str, str], settings: Settings
    ) -> dict[str, str]:
        return {"x-echo-key": secret, "accept-encoding": "identity"}

    def stream_meter(self, content_encoding: str) -> EchoMeter:
        return EchoMeter()

    def answer_usage(self, body: bytes | None) -> tuple[TokenUsage, str | None]:
        try:
            answer = json.loads(body or b"")
            tokens = answer["tokens"]
            return TokenUsage(input_tokens=int(tokens["in"]), output_tokens=int(tokens["out"])), answer.get("model")
        except (ValueError, KeyError, TypeError):
            return TokenUsage(), None

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
        return Outcome(status=status, count_failure=status >= 500)

    def error_body(self, error: RelayError, request_id: str) -> bytes:
        return json.dumps({"echo_error": {"kind": error.error_type, "text": error.message, "id": request_id}}).encode()

    def error_frame(self, error: RelayError) -> bytes:
        return self.error_body(error, "") + b"\n"

    def error_type(self, body: bytes | None) -> str:
        try:
            return str(json.loads(body or b"")["echo_error"]["kind"])
        except (ValueError, KeyError, TypeError):
            return "unknown"


register(EchoProtocol())
