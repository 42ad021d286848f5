"""Learns account health from every upstream answer, and moves a failed request on to another account.

An attempt that fails before any byte reached the client (a quota 429, a 529, a 5xx, a refused token, a
ban, a dropped connection, a stream that opened with an `error` event) is judged in the
`upstream_answer` hook (addons/failover_stream.py): the failed account's health is written first, then the
flow is routed anew and sent again, up to `failover_max_switches` accounts, for any client. A 401 on a
refreshable account refreshes the token and tries the same account once more. When no other account can
serve, the answer goes on as it came, and the response hook below gives today's answers: the clear
no-account error, or `529` retry-now when switches ran out while another account could still serve
(retry-after-ms 100, x-should-retry true; Claude Code and the SDKs retry at once). Upstream errors that
are about the request itself pass through untouched.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.common import header_map
from addons.common import state_of
from addons.recorder import answered_usage
from addons.recorder import broken_usage
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.flow_state import FlowState
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import Outcome
from relay_core.metering import charge_of
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

    async def upstream_answer(self, flow: http.HTTPFlow) -> None:
        """An attempt ended before the client saw anything: send the request to another account if one can
        serve it, after writing the failed account's health."""
        state = state_of(flow)
        if state is None or state.account is None or state.key is None or state.recorded:
            return
        runtime = self.shared.current()
        outcome = self._judge(flow, state, runtime)
        if not outcome.failover:
            return
        account = state.account
        same_account = outcome.new_state is AccountState.UNAUTHORIZED and await self._refreshed(state, runtime)
        health = _health_after(state, outcome)
        if not same_account and not _another_serves(state, health):
            return  # the answer goes on; the response (or error) hooks give the client today's answer
        await self._record_attempt(flow, state, outcome, runtime)
        logger.warning("account %r failed (%s); sending the request to another account", account.name, outcome.reason)
        runtime.publish_outcome(account, outcome, state.health.get(account.id))  # the Recorder sees the last only
        if state.meter is not None:
            runtime.journal.forget(state.request_id)
        state.health = health
        state.next_attempt(failed=not same_account)

    @staticmethod
    async def _record_attempt(flow: http.HTTPFlow, state: FlowState, outcome: Outcome, runtime: Runtime) -> None:
        """The failed attempt, as the Recorder would have written it: the account's health, and a request for
        the account and key (an error answer costs nothing; a stream cut before `message_start` its input
        estimate). The request's budget reservation stays for the next attempt."""
        assert state.account is not None and state.key is not None
        settings = runtime.settings
        if flow.error is not None or flow.response is None:
            usage = broken_usage(flow, state, settings.price_overrides)
        else:
            usage = answered_usage(flow, state, settings.price_overrides)
        charge = charge_of(state.key, usage, runtime.store.zone) if usage is not None else None
        try:
            completion = await runtime.store.record_completion(
                state.account.id, outcome, settings.health_rules, usage, settings.usage_retention_days, charge=charge
            )
        except StoreError as exc:
            logger.error("could not record account %r's failure: %s", state.account.name, exc)
            return
        runtime.publish_spend(state.key, charge, completion)

    @staticmethod
    def _judge(flow: http.HTTPFlow, state: FlowState, runtime: Runtime) -> Outcome:
        """The attempt's outcome: from the answer (or the error event a stream opened with), else the broken
        connection (a failure that counts toward the account's streak)."""
        assert state.account is not None
        if flow.error is not None or flow.response is None:
            message = flow.error.msg if flow.error is not None else "no answer"
            return Outcome(status=502, count_failure=True, failover=True, reason=f"upstream connection: {message}")
        response = flow.response
        status, body = response.status_code, response.get_content(strict=False)
        if state.opening is not None:
            status, body = state.opening.status, state.opening.error_body
        state.outcome = state.protocol.judge_answer(
            status,
            header_map(response.headers),
            body,
            state.account.kind,
            runtime.settings.health_rules,
            allow_extra_usage=state.account.allow_extra_usage,
        )
        return state.outcome

    async def response(self, flow: http.HTTPFlow) -> None:
        """The final answer: judged (unless its attempt already was), and replaced only when the account cannot
        serve for now: by the no-account error, or by retry-now when another account could serve."""
        state = state_of(flow)
        if state is None or not state.routed or state.refused or state.recorded or state.account is None:
            return
        if flow.response is None:
            return
        runtime = self.shared.current()
        response = flow.response
        body = response.get_content(strict=False) if state.meter is None else None  # a stream's went by
        if state.outcome is None:
            state.outcome = state.protocol.judge_answer(
                response.status_code,
                header_map(response.headers),
                body,
                state.account.kind,
                runtime.settings.health_rules,
                allow_extra_usage=state.account.allow_extra_usage,
            )
        if not (state.outcome.failover and state.outcome.account_unavailable) or state.opening is not None:
            return  # a stream's own error event goes on as it came (the Recorder writes the account's health)
        logger.warning(
            "account %r failed (%s); no other account took the request", state.account.name, state.outcome.reason
        )
        refusal = (
            retry_now("The upstream account's token had expired and was refreshed; retrying now succeeds.")
            if state.outcome.new_state is AccountState.UNAUTHORIZED and await self._refreshed(state, runtime)
            else self._refusal(state)
        )
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

    @staticmethod
    async def _refreshed(state: FlowState, runtime: Runtime) -> bool:
        """A 401 on a refreshable account: refresh once; the account is unauthorized no more, and this request
        knows its new token.

        A 401 right after a refresh means the fresh token is refused too: then the account stays
        `unauthorized` (judge's verdict) until an admin looks at it.
        """
        assert state.account is not None and state.outcome is not None
        account, outcome = state.account, state.outcome
        if not account.refreshable:
            return False
        if account.refreshed_at is not None and time.time() - account.refreshed_at < FRESH_TOKEN_S:
            return False
        try:
            refreshed = await runtime.refresher.refresh(account)
        except RefreshFailed as exc:
            outcome.new_state, outcome.reason = AccountState.ERROR, str(exc)
            return False
        outcome.new_state = None
        state.accounts = [refreshed if known.id == refreshed.id else known for known in state.accounts]
        return True

    @staticmethod
    def _refusal(state: FlowState) -> RelayError:
        """529-retry-now when another account can take over, else the clear no-account answer."""
        assert state.account is not None and state.outcome is not None and state.key is not None
        health = _health_after(state, state.outcome)
        try:
            _next_account(state, health)
        except RelayError as exhausted:
            return exhausted
        return retry_now(
            "The upstream account that took this request is unavailable; retrying now uses another account."
        )


def _health_after(state: FlowState, outcome: Outcome) -> dict[str, AccountHealth]:
    """The accounts' health as this request knows it, with the failed account's new state and cooldown."""
    assert state.account is not None
    now = time.time()
    health = dict(state.health)
    failed = health.get(state.account.id, AccountHealth())
    health[state.account.id] = AccountHealth(
        state=outcome.new_state or failed.state,
        cooldowns={
            **failed.cooldowns,
            **({outcome.cool_family: outcome.cool_until or now} if outcome.cool_family else {}),
        },
        rate_limits=failed.rate_limits,
    )
    return health


def _next_account(state: FlowState, health: dict[str, AccountHealth]) -> None:
    """Raises the no-account error unless an account that has not failed this request can serve it."""
    assert state.account is not None and state.key is not None
    choose_account(
        state.accounts,
        health,
        state.key,
        state.request_model,
        time.time(),
        exclude={*state.failed_accounts, state.account.id},
        claude_code=state.claude_code,
    )


def _another_serves(state: FlowState, health: dict[str, AccountHealth]) -> bool:
    try:
        _next_account(state, health)
    except RelayError:
        return False
    return True


def retry_now(message: str) -> RelayError:
    return RelayError(529, "overloaded_error", message, retry_after=1, should_retry=True)
