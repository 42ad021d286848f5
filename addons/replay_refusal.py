"""Under `relay web`, refuses a replayed flow before any relay addon sees it.

mitmweb holds redacted copies; replaying one, or an edited one carrying a real team key, must
neither reach an upstream nor go through admission, where it would take a concurrency lease and
count against the key's limits. The first entry of mitmweb's chain, ahead of the relay's.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import refuse
from relay_core.errors import RelayError

REPLAY_REFUSED = RelayError(403, "permission_error", "relay web does not replay flows: its flows are redacted copies")


class ReplayRefusal:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay != "request" or flow.response:
            return
        refuse(flow, REPLAY_REFUSED)
