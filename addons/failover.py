"""Learns account health from every upstream answer, and sends the client elsewhere when the account failed.

mitmproxy cannot re-issue a flow on the client's connection, and a stream callable cannot pull a
second upstream's body, so a failed attempt is not retried inside the relay. Instead, when the
account is limited, overloaded, unauthorized or banned and another account can serve, the client
gets `529 overloaded_error` with `retry-after-ms: 100` and `x-should-retry: true`: Claude Code and
the SDKs retry at once, and the account's new health (written before this answer leaves) sends the
retry to a healthy account. Upstream errors that are about the request itself pass through untouched.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.flow_state import FlowState
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.metering import record_from_body
from relay_core.runtime import Runtime
from relay_core.scheduler import choose_account
from relay_core.store import StoreError
from relay_core.token_refresh import RefreshFailed

logger = logging.getLogger(__name__)

RETRY_ELSEWHERE_MS = 100
FRESH_TOKEN_S = 60  # a 401 this soon after a refresh is not cured by another one


class Failover:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    async def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or not state.routed or state.refused or state.recorded or state.account is None:
            return
        if flow.response is None:
            return
        runtime = self.shared.current()
        response = flow.response
        body = response.get_content(strict=False) if state.meter is None else None  # a stream's went by
        state.outcome = state.protocol.judge_answer(
            response.status_code,
            response.headers,
            body,
            state.account.kind,
            runtime.settings.health_rules,
            allow_extra_usage=state.account.allow_extra_usage,
        )
        if not state.outcome.failover:
            return
        logger.warning(
            "account %r failed (%s); sending the client to another account", state.account.name, state.outcome.reason
        )
        refusal = await self._refreshed(state, runtime) or self._refusal(state)
        try:
            usage = record_from_body(state, body, response.status_code, runtime.settings.price_overrides)
            await runtime.store.record_completion(
                state.account.id,
                state.outcome,
                runtime.settings.health_rules,
                usage if state.route.is_metered else None,
                runtime.settings.usage_retention_days,
            )
            state.recorded = True
        except StoreError as exc:
            logger.error("could not record account %r's failure: %s", state.account.name, exc)
        flow.response = http.Response.make(
            refusal.status, state.protocol.error_body(refusal, state.request_id), refusal.headers(state.request_id)
        )
        if refusal.status == 529:
            flow.response.headers["retry-after-ms"] = str(RETRY_ELSEWHERE_MS)

    async def _refreshed(self, state: FlowState, runtime: Runtime) -> RelayError | None:
        """A 401 on a refreshable account: refresh once, and let the client retry with the new token.

        A 401 right after a refresh means the fresh token is refused too: then the account stays
        `unauthorized` (judge's verdict) until an admin looks at it.
        """
        assert state.account is not None and state.outcome is not None
        account, outcome = state.account, state.outcome
        if outcome.new_state is not AccountState.UNAUTHORIZED or not account.refreshable:
            return None
        if account.refreshed_at is not None and time.time() - account.refreshed_at < FRESH_TOKEN_S:
            return None
        try:
            await runtime.refresher.refresh(account)
        except RefreshFailed as exc:
            outcome.new_state, outcome.reason = AccountState.ERROR, str(exc)
            return None
        outcome.new_state = None
        return retry_now("The upstream account's token had expired and was refreshed; retrying now succeeds.")

    def _refusal(self, state: FlowState) -> RelayError:
        """529-retry-now when another account can take over, else the clear no-account answer."""
        assert state.account is not None and state.outcome is not None and state.key is not None
        now = time.time()
        outcome = state.outcome
        health = dict(state.health)
        failed = health.get(state.account.id, AccountHealth())
        failed = AccountHealth(
            state=outcome.new_state or failed.state,
            cooldowns={
                **failed.cooldowns,
                **({outcome.cool_family: outcome.cool_until or now} if outcome.cool_family else {}),
            },
        )
        health[state.account.id] = failed
        try:
            choose_account(
                state.accounts,
                health,
                state.key,
                state.request_model,
                now,
                exclude={state.account.id},
                claude_code=state.claude_code,
            )
        except RelayError as exhausted:
            return exhausted
        return retry_now(
            "The upstream account that took this request is unavailable; retrying now uses another account."
        )


def retry_now(message: str) -> RelayError:
    return RelayError(529, "overloaded_error", message, retry_after=1, should_retry=True)
