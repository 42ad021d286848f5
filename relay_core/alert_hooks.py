"""Webhooks that receive alerts: what is stored of one, what it is sent, and how its URL is shown.

A webhook URL is a secret (a Slack incoming-webhook URL lets anyone post to the channel), so the store
keeps it sealed with the server secret like an account's token, and after creation it is only ever
shown masked: scheme, host and a hint of the path's end, never its path tokens, query or credentials.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic import Field

from relay_core.events import Event
from relay_core.models import new_id


class HookFormat(StrEnum):
    JSON = "json"  # the event record: type, at, fields
    SLACK = "slack"  # {"text": one line}: Slack incoming webhooks (and Mattermost, Discord's /slack)


class AlertHook(BaseModel):
    id: str = Field(default_factory=new_id)
    sealed_url: str = Field(description="the URL, sealed with the server secret (bound to the id)")
    shown_url: str = Field(description="the URL masked, as lists show it")
    format: HookFormat = HookFormat.JSON
    events: list[str] = Field(default_factory=list, description="event types it receives; empty: all")
    created_at: float = Field(default_factory=time.time)

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


def masked_hook_url(url: str) -> str:
    """`https://hooks.slack.com/…/XyZ9` style: where it goes, and four characters to tell two apart."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    tail = parts.path.rstrip("/")[-4:]
    return f"{parts.scheme}://{host}/…{tail}" if len(parts.path.strip("/")) > 8 else f"{parts.scheme}://{host}/…"


def payload(hook_format: HookFormat, event: Event) -> dict[str, Any]:
    if hook_format is HookFormat.SLACK:
        return {"text": event.summary()}
    return event.payload()
