"""Requests captured from the real Claude Code CLI (v2.1.332, trimmed), to shape requests after them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTURE = Path(__file__).parent.parent / "data" / "claude-code-2.1.332-tool-session.json"
# Set by the relay on the way up, not sent by the client.
_RELAY_SET = {"host", "content-length", "authorization", "accept-encoding", "connection"}


def claude_code_request(turn: int = 0) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers (names lower-cased) and body of one captured /v1/messages request, as Claude Code sent them."""
    captured = json.loads(CAPTURE.read_text())["requests"][turn]
    headers = {k.lower(): v for k, v in captured["headers"].items() if k.lower() not in _RELAY_SET}
    return headers, captured["body"]
