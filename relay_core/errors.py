"""Errors the relay answers itself; each protocol renders them in its clients' envelope (`ApiProtocol.error_body`)."""

from __future__ import annotations

import secrets


def new_request_id() -> str:
    return "req_relay_" + secrets.token_hex(12)


class RelayError(Exception):
    """A refusal with the status and `error.type` a client already knows how to handle."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        retry_after: int | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.should_retry = should_retry

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "request-id": request_id}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(0, int(self.retry_after)))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


def unauthenticated(message: str) -> RelayError:
    return RelayError(401, "authentication_error", message, should_retry=False)


def internal_error() -> RelayError:
    return RelayError(500, "api_error", "The relay failed while handling this request; it was not sent upstream.")


def store_unavailable() -> RelayError:
    return RelayError(
        503,
        "api_error",
        "The relay cannot reach its store right now, so it cannot check your key. Retry shortly.",
        retry_after=2,
        should_retry=True,
    )


def too_large(limit: int) -> RelayError:
    return RelayError(413, "request_too_large", f"The request is larger than the relay's limit of {limit} bytes.")


def shutting_down() -> RelayError:
    return RelayError(
        503,
        "api_error",
        "This relay is shutting down; retry and another relay (or this one, restarted) will answer.",
        retry_after=1,
        should_retry=True,
    )
