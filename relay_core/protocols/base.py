"""What an API protocol (Anthropic Messages, later Gemini, OpenAI) provides to the relay.

The addons and the protocol-neutral rules (scheduling, limits, pricing, records) only ever talk to a
protocol through this interface, reached as `FlowState.protocol`; each protocol is one folder under
`relay_core/protocols/`, made known with `relay_core.protocols.register`.
"""

from __future__ import annotations

from abc import ABC
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Protocol

from relay_core.errors import RelayError
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.settings import Settings
from relay_core.usage import TokenUsage


class RequestRoute(Protocol):
    """What the relay reads from any route: a protocol's own, or one of the relay's (relay_core.routes)."""

    @property
    def value(self) -> str: ...  # the route's name in metrics and logs

    @property
    def is_relayed(self) -> bool: ...  # authenticated, scheduled onto an account and sent upstream

    @property
    def is_metered(self) -> bool: ...  # its answer carries token usage that is charged to the key

    @property
    def reads_body(self) -> bool: ...  # its body names a model the relay checks (`ApiProtocol.parse_request`)


class ParsedRequest(Protocol):
    """What the relay needs from a request body, read once; the body itself is forwarded untouched."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool: ...

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def is_human_turn(self) -> bool: ...  # a person speaking, not a tool result: queued per account


class UsageMeter(Protocol):
    """Reads usage from a streamed answer on the side: `feed` every chunk as it came, then `b""` at the end."""

    usage: TokenUsage
    model: str | None
    error: dict[str, Any] | None  # the error event the upstream ended the stream with (not billed)
    saw_message_start: bool  # the stream began its answer (its input usage is known)
    saw_message_delta: bool  # the final output count came
    output_chars: int  # characters of output seen, for an estimate when the final count never came

    def feed(self, chunk: bytes) -> None: ...


@dataclass(frozen=True)
class StreamOpening:
    """A streamed answer's first event: 200 for an answer; else the status its error event stands for, and
    that event's data (the error body a plain answer would have had)."""

    status: int
    error_body: bytes

    @property
    def failed(self) -> bool:
        return self.status >= 400


class ApiProtocol(ABC):
    """One API the relay serves to its clients and speaks to the upstream."""

    name: str
    key_hint: str  # what a client without a team key is told to set

    def presented_key(self, headers: Mapping[str, str], path: str) -> str | None:
        """The team key from `x-api-key` or `Authorization: Bearer` (Claude Code may send either)."""
        key = headers.get("x-api-key", "").strip()
        if key:
            return key
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    @abstractmethod
    def serves(self, route: RequestRoute, kind: AccountKind) -> bool:
        """Whether an account of this kind can serve this route (the others are never scheduled for it)."""

    @abstractmethod
    def default_base_url(self, route: RequestRoute, settings: Settings) -> str:
        """Where a route goes for an account without a base URL of its own."""

    def upstream_path(self, path: str) -> str:
        """The client's path (with its query) as the upstream is asked for it."""
        return path

    def upstream_body(self, route: RequestRoute, message: ParsedRequest | None, account: Account) -> bytes | None:
        """The body to send for this account instead of the client's (built from the request as parsed on
        arrival, `message`, never parsed again), or None to send the client's bytes untouched."""
        return None

    def body_session(self, message: ParsedRequest) -> str | None:
        """The client session a request body names (requests of one session stay on one account)."""
        return None

    @abstractmethod
    def classify(self, method: str, path: str) -> RequestRoute | None:
        """The route of a request line this protocol owns, or None. `path` has no query, no trailing `/`
        and no ambiguous segment (relay_core.routes.is_ambiguous_path)."""

    def answer_locally(self, route: RequestRoute) -> tuple[int, bytes, dict[str, str]] | None:
        """Status, body and headers of an answer the relay gives itself for this route (no upstream, no key)."""
        return None

    @abstractmethod
    def parse_request(self, raw: bytes, route: RequestRoute, path: str) -> ParsedRequest:
        """Read a `reads_body` route's body (`path` as the client sent it); raise RelayError for what the
        upstream would refuse anyway."""

    @abstractmethod
    def is_dropped(self, header: str) -> bool:
        """A client request header (its name in lowercase) that must not reach the upstream (credentials, proxy
        hints)."""

    @abstractmethod
    def upstream_headers(
        self, account: Account, secret: str, client_headers: Mapping[str, str], settings: Settings
    ) -> dict[str, str]:
        """Headers to set upstream for this account, after the dropped ones are gone."""

    @abstractmethod
    def stream_meter(self, content_encoding: str) -> UsageMeter:
        """A meter for a streamed answer sent with this `content-encoding`."""

    def stream_opening(self, head: bytes) -> StreamOpening | None:
        """The verdict on a streamed answer's first event, or None until it is complete. A protocol whose
        streams never open with an error keeps this default: every stream is an answer."""
        return StreamOpening(200, b"")

    @abstractmethod
    def answer_usage(self, body: bytes | None) -> tuple[TokenUsage, str | None]:
        """The usage and model a buffered answer shows (empty usage and None when it shows none)."""

    @abstractmethod
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
        """What an upstream answer says about the health of the account that served it."""

    @abstractmethod
    def error_body(self, error: RelayError, request_id: str) -> bytes:
        """A refusal as the body this protocol's clients parse as an error."""

    @abstractmethod
    def error_frame(self, error: RelayError) -> bytes:
        """The same error as a stream event, for failures after a streamed answer has begun."""

    @abstractmethod
    def error_type(self, body: bytes | None) -> str:
        """The error type an error body names (for metrics), or `unknown`."""
