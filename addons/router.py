"""Picks the upstream account and swaps the client's credential for the account's.

The reverse-proxy target the relay is started with is a dead end: a flow reaches an upstream only
after this addon has routed it, and FailClosedGate refuses any flow it did not route.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.common import fail_closed
from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.crypto import DecryptError
from relay_core.errors import RelayError
from relay_core.request_body import parse_message_request
from relay_core.routes import Route
from relay_core.scheduler import choose_account
from relay_core.sessions import session_from_body
from relay_core.upstream import credential_headers
from relay_core.upstream import is_dropped
from relay_core.upstream import target_of

logger = logging.getLogger(__name__)


class Router:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        state = state_of(flow)
        if state is None or state.key is None or not state.route.is_relayed:
            return
        runtime = self.shared.current()
        settings = runtime.settings
        if state.route in (Route.MESSAGES, Route.COUNT_TOKENS):
            state.message = parse_message_request(flow.request.raw_content or b"")
            if state.session is None and state.route is Route.MESSAGES:
                state.session = session_from_body(state.message.body)
                if state.session is not None:
                    state.sticky = await runtime.store.sticky_account(state.key.id, state.session)
        account = choose_account(
            state.accounts,
            state.health,
            state.key,
            state.request_model,
            time.time(),
            sticky=state.sticky,
            warning_utilization=settings.warning_utilization,
        )
        try:
            secret = runtime.keyring.open(account.sealed_secret, account.id)
        except DecryptError as exc:
            logger.error("account %r: credential cannot be decrypted (%s)", account.name, exc)
            raise RelayError(
                503, "api_error", "An upstream account's credential cannot be decrypted; the relay admin must fix it."
            ) from None

        headers = flow.request.headers
        client_beta = headers.get("anthropic-beta")
        for name in {n.lower() for n in headers}:
            if is_dropped(name):
                del headers[name]
        headers.update(credential_headers(account, secret, client_beta, settings.oauth_beta))
        headers.setdefault("anthropic-version", settings.anthropic_version)

        target = target_of(account.base_url or settings.upstream_url)
        flow.request.scheme = target.scheme
        flow.request.host = target.host
        flow.request.port = target.port
        if target.path_prefix:
            flow.request.path = target.path_prefix + flow.request.path
        state.account = account
        state.routed = True
