"""What the addons learn about one request, kept in `flow.metadata` under one key."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field

from relay_core.errors import new_request_id
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.routes import Route
from relay_core.sse import SseUsageMeter

METADATA_KEY = "relay"


@dataclass
class FlowState:
    route: Route
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.time)
    key: TeamKey | None = None
    accounts: list[Account] = field(default_factory=list)
    account: Account | None = None
    request_model: str | None = None
    routed: bool = False
    meter: SseUsageMeter | None = None
    recorded: bool = False
