"""Is this request from Claude Code? Subscriptions may serve only Claude Code (and the Claude Agent SDK).

Since 2026-04 Anthropic answers other clients on a subscription token with 400 "Third-party apps now draw
from your extra usage…" or bills them to the owner's extra usage, so the relay must tell them apart
before it picks an account. Recognition uses what the shipped CLI really sends (captured from v2.1.332):
its user agent and `x-app` header, plus, in a Messages body, its attribution (billing) block or identity
line in `system`, or its `metadata.user_id`. A client can imitate all of it; this is a safety rail for
honest teams, not a security boundary, and the relay never rewrites a body to disguise a client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from relay_core.errors import RelayError

USER_AGENT_PREFIX = "claude-cli/"  # Claude Code and the Agent SDKs: `claude-cli/2.1.332 (external, sdk-cli)`
APPS = ("cli", "cli-bg")
BILLING_PREFIX = "x-anthropic-billing-header:"
IDENTITIES = (
    "You are Claude Code, Anthropic's official CLI for Claude",  # also "…, running within the Claude Agent SDK."
    "You are a Claude agent, built on Anthropic's Claude Agent SDK",
)
_LEGACY_USER_ID = re.compile(r"^user_[0-9a-fA-F]{64}_account_[^_]*_session_[0-9a-fA-F-]+$")


def claude_code_headers(headers: Mapping[str, str]) -> bool:
    """Claude Code's user agent, and its `x-app` when it sends one: all a request without a body can show."""
    app = headers.get("x-app")
    return headers.get("user-agent", "").startswith(USER_AGENT_PREFIX) and (app is None or app in APPS)


def claude_code_body(body: Mapping[str, Any]) -> bool:
    """The body shows Claude Code's attribution block or identity line in `system`, or its `metadata.user_id`.

    The billing block can be switched off (CLAUDE_CODE_ATTRIBUTION_HEADER=0) and background requests such
    as the quota probe carry no system prompt, so any one signal suffices."""
    system = body.get("system")
    blocks: list[Any] = [system] if isinstance(system, str) else system if isinstance(system, list) else []
    for block in blocks[:3]:  # the billing block is first, the identity line right after it
        text = block.get("text") if isinstance(block, dict) else block
        if isinstance(text, str) and (text.startswith(BILLING_PREFIX) or text.lstrip().startswith(IDENTITIES)):
            return True
    metadata = body.get("metadata")
    return isinstance(metadata, dict) and _claude_code_user_id(metadata.get("user_id"))


def _claude_code_user_id(value: Any) -> bool:
    """v2.1.78+: a JSON string with device_id and session_id; before: `user_<hex>_account_<id>_session_<id>`."""
    if not isinstance(value, str):
        return False
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return False
        return isinstance(parsed, dict) and isinstance(parsed.get("device_id"), str) and "session_id" in parsed
    return _LEGACY_USER_ID.match(value) is not None


def is_claude_code(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> bool:
    """Headers always; the body too when the request has one (Messages and token counting)."""
    return claude_code_headers(headers) and (body is None or claude_code_body(body))


def other_client_refused(key_name: str) -> RelayError:
    """The answer for a non-Claude-Code request that only subscription accounts could serve."""
    return RelayError(
        403,
        "permission_error",
        "This request does not come from Claude Code, and the relay's accounts that could serve team key "
        f"{key_name!r} are Claude subscriptions. Anthropic bills other apps on a subscription to the owner's "
        "extra usage or refuses them, so the relay sends them only to API-key accounts. Use Claude Code, or "
        "ask your relay admin for an API-key account or to allow other clients on this key "
        f"(`relay keys update {key_name} --allow-other-clients`), knowing who pays.",
        should_retry=False,
    )
