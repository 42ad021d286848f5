"""Sends an account's human turns one at a time, and frees the lock as soon as response headers arrive.

The subscription's request-rate limit counts requests when they are sent, so the next turn only
needs to wait for this one's headers (plus a short gap), not for its whole answer. Waiters are
queued per team key, and keys take turns (relay_core/user_queue.py).
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import fail_closed
from addons.common import pending_state
from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.flow_state import FlowState


class QueueLock:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or not state.routed or state.account is None or state.message is None:
            return
        if state.lock_account is not None:  # sent again: the failed account's lock goes before another is taken
            self._release(state)
        runtime = self.shared.current()
        if not (
            state.message.is_human_turn
            and state.account.queues_human_turns(runtime.settings.user_message_queue_enabled)
        ):
            return
        key_id = state.key.id if state.key is not None else ""
        if not await runtime.queue.acquire(state.account.id, state.request_id, key_id):
            raise RelayError(
                529,
                "overloaded_error",
                "The upstream account is busy with other people's messages; retrying shortly will get through.",
                retry_after=1,
                should_retry=True,
            )
        state.lock_account = state.account.id

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._release(state_of(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(state_of(flow))

    def _release(self, state: FlowState | None) -> None:
        if state is None or state.lock_account is None:
            return
        account_id, state.lock_account = state.lock_account, None
        runtime = self.shared.current()
        runtime.spawn(runtime.queue.release(account_id, state.request_id), "rate lock release")
