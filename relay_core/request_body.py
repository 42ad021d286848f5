"""What the relay needs from a request body, read once; the body itself is forwarded untouched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay_core.errors import RelayError

HUMAN_BLOCKS = frozenset({"text", "image", "document"})


@dataclass(frozen=True)
class MessageRequest:
    model: str
    stream: bool
    body: dict[str, Any]

    @property
    def is_human_turn(self) -> bool:
        """The last message is a person speaking: text or images, not tool results handed back."""
        messages = self.body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return False
        last = messages[-1]
        if last.get("role") != "user":
            return False
        content = last.get("content")
        if isinstance(content, str):
            return bool(content.strip())
        if not isinstance(content, list):
            return False
        kinds = {block.get("type") for block in content if isinstance(block, dict)}
        return "tool_result" not in kinds and bool(kinds & HUMAN_BLOCKS)


def parse_message_request(raw: bytes) -> MessageRequest:
    """Refuse what the upstream would refuse anyway, before spending an upstream call on it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RelayError(400, "invalid_request_error", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RelayError(400, "invalid_request_error", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RelayError(400, "invalid_request_error", "model: Field required (a model id string).")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RelayError(400, "invalid_request_error", "stream: Input should be a valid boolean.")
    return MessageRequest(model=model, stream=stream, body=body)
