"""What the relay needs from a Messages request body, read once; the body itself is forwarded untouched."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from dataclasses import dataclass
from typing import Any

from relay_core.errors import RelayError

HUMAN_BLOCKS = frozenset({"text", "image", "document"})
# Every model id any provider uses fits this (`claude-sonnet-4-5[1m]`, `us.anthropic.claude-…:0`); anything else
# is refused before it becomes a usage field, a metrics label or a log value.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,199}")
# Top-level fields no relay rule reads: parsed without the duplicate-key check, which roughly doubles the
# parse time of each JSON object (see `_unique`); Claude Code's tool definitions hold half a body's objects.
UNREAD_FIELDS = frozenset({"tools"})


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
        kinds = {
            block.get("type") for block in content if isinstance(block, dict) and isinstance(block.get("type"), str)
        }
        return "tool_result" not in kinds and bool(kinds & HUMAN_BLOCKS)


def duplicate_key(key: str) -> RelayError:
    return RelayError(
        400,
        "invalid_request_error",
        f"The request body has the key {key!r} more than once in one object; send each key once.",
    )


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: JSON parsers disagree on which of two equal keys wins (Python's takes the last),
    so the relay could check one model while the upstream serves the other."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise duplicate_key(key)
            seen.add(key)
    return obj


# The stdlib's own scanner pieces; typeshed leaves WHITESPACE and scanstring out and types make_scanner as
# a class, so they are read untyped.
_decoder: Any = json.decoder
_make_scanner: Any = json.scanner.make_scanner
_scan_checked = _make_scanner(json.JSONDecoder(object_pairs_hook=_unique))
_scan_fast = _make_scanner(json.JSONDecoder())
_space = _decoder.WHITESPACE.match
_scanstring = _decoder.scanstring


def _value(s: str, at: int, checked: bool) -> tuple[Any, int]:
    try:
        return (_scan_checked if checked else _scan_fast)(s, at)
    except StopIteration:
        raise json.JSONDecodeError("Expecting value", s, at) from None


def _object(s: str) -> Any:
    """json.loads for a body that should be an object, written out at the top level (a few keys) so each
    value can be parsed by the C scanner with or without the duplicate check."""
    at = _space(s, 0).end()
    if s[at : at + 1] != "{":
        return json.loads(s)  # not an object: json's own answer (a value, or its error)
    body: dict[str, Any] = {}
    at = _space(s, at + 1).end()
    if s[at : at + 1] == "}":
        at += 1
    else:
        while True:
            if s[at : at + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, at)
            key, at = _scanstring(s, at + 1)
            at = _space(s, at).end()
            if s[at : at + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", s, at)
            at = _space(s, at + 1).end()
            if key in body:
                raise duplicate_key(key)
            body[key], at = _value(s, at, key not in UNREAD_FIELDS)
            at = _space(s, at).end()
            if s[at : at + 1] == "}":
                at += 1
                break
            if s[at : at + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", s, at)
            at = _space(s, at + 1).end()
    if _space(s, at).end() != len(s):
        raise json.JSONDecodeError("Extra data", s, at)
    return body


def parse_json_body(raw: bytes) -> Any:
    """json.loads, except that a key given twice in one object raises `duplicate_key`, everywhere except
    inside `UNREAD_FIELDS`."""
    return _object(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def parse_message_request(raw: bytes) -> MessageRequest:
    """Refuse what the upstream would refuse anyway, before spending an upstream call on it."""
    try:
        body = parse_json_body(raw)
    except (ValueError, UnicodeDecodeError):
        raise RelayError(400, "invalid_request_error", "The request body is not valid JSON.") from None
    except RecursionError:  # JSON nested deeper than Python's parser goes: no real request is
        raise RelayError(400, "invalid_request_error", "The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise RelayError(400, "invalid_request_error", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RelayError(400, "invalid_request_error", "model: Field required (a model id string).")
    if not MODEL_ID.fullmatch(model):
        raise RelayError(
            400,
            "invalid_request_error",
            "model: not a model id (up to 200 letters, digits and . _ - : @ / [ ]).",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RelayError(400, "invalid_request_error", "stream: Input should be a valid boolean.")
    return MessageRequest(model=model, stream=stream, body=body)
