"""Picks the upstream account and swaps the client's credential for the account's.

The reverse-proxy target the relay is started with is a dead end: a flow reaches an upstream only
after this addon has routed it, and FailClosedGate refuses any flow it did not route.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy.connection import Server
from mitmproxy.net.server_spec import ServerSpec

from addons.common import fail_closed
from addons.common import pending_state
from addons.common import set_headers
from addons.relay_runtime import RelayRuntime
from relay_core.account_caps import caps_refused
from relay_core.account_caps import take_account_slot
from relay_core.account_urls import opened
from relay_core.budget import estimate_nanousd
from relay_core.budget import reservation_refused
from relay_core.clients import is_claude_code
from relay_core.crypto import DecryptError
from relay_core.errors import RelayError
from relay_core.flow_state import FlowState
from relay_core.health import AccountState
from relay_core.limits import check_model
from relay_core.limits import check_priced
from relay_core.limits import claude_code_only_refused
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.runtime import Runtime
from relay_core.scheduler import choose_account
from relay_core.socks_bridge import SocksBridges
from relay_core.store.account_caps import CapReached
from relay_core.token_refresh import RefreshFailed
from relay_core.upstream import proxy_of
from relay_core.upstream import target_of

logger = logging.getLogger(__name__)


class Router:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._proxy_authorization: dict[tuple[str, int], str] = {}  # proxy address -> Proxy-Authorization
        self._socks_bridges = SocksBridges()

    async def _account_and_secret(self, state: FlowState, runtime: Runtime) -> tuple[Account, str]:
        """Schedule; refresh a token that is due; an account that cannot be used is marked and skipped, one at
        its cap (relay_core.account_caps) is skipped; when only capped ones were left, the cap refuses."""
        assert state.key is not None
        settings = runtime.settings
        unusable: set[str] = set(state.failed_accounts)
        at_cap: list[CapReached] = []
        while True:
            try:
                account = choose_account(
                    state.accounts,
                    state.health,
                    state.key,
                    state.request_model,
                    time.time(),
                    sticky=state.sticky,
                    exclude=unusable,
                    warning_utilization=settings.warning_utilization,
                    claude_code=state.claude_code,
                )
            except RelayError:
                if at_cap:
                    raise caps_refused(at_cap) from None
                raise
            try:
                account = await runtime.refresher.usable(account)
                secret = runtime.keyring.open(account.sealed_secret, account.id)
                reached = await take_account_slot(state, account, runtime)
                if reached is None:
                    return account, secret
                at_cap.append(reached)
            except RefreshFailed as exc:
                logger.warning("skipping account: %s", exc)
            except DecryptError:
                reason = "its credential cannot be decrypted with the current server secret; add it again"
                logger.error("account %r: %s", account.name, reason)
                await runtime.store.set_account_state(account.id, AccountState.ERROR, reason)
            unusable.add(account.id)

    @staticmethod
    async def _reserve(state: FlowState, runtime: Runtime, body_bytes: int) -> None:
        """Hold the request's estimated cost against the key's budgets until its usage is recorded."""
        assert state.key is not None and state.message is not None
        now = time.time()
        now_periods = periods(now, runtime.store.zone)
        cost = estimate_nanousd(state.message, body_bytes, runtime.settings.price_overrides)
        reservations, member = runtime.store.key_reservations(state.key.id), f"{state.request_id}|{cost}"
        refused = await runtime.store.reserve_budget(state.key, member, runtime.settings.lease_ttl_ms, now_periods)
        if refused is not None:
            raise reservation_refused(state.key, *refused, now_periods, now)
        state.reservation = (reservations, member)
        runtime.leases.hold(reservations, member)

    async def _route_via(self, flow: http.HTTPFlow, account: Account, connect_timeout_s: float) -> None:
        """Exactly this account's proxy, or none. A flow may carry the live connection of the previous request
        on the same client connection; its route is never edited in place, a new connection is asked for.
        A SOCKS5 proxy is reached through this process's loopback bridge for its URL (an HTTP proxy to mitmproxy)."""
        via: ServerSpec | None = None
        if account.proxy:
            proxy = proxy_of(account.proxy)
            address, authorization = (proxy.host, proxy.port), proxy.authorization
            if proxy.is_socks:
                bridge = await self._socks_bridges.bridge_for(account.proxy, connect_timeout_s)
                address, authorization = bridge.address, bridge.authorization
            via = ("http", address)
            if authorization:
                self._proxy_authorization[address] = authorization
        if flow.server_conn.via != via:
            flow.server_conn = Server(address=(flow.request.host, flow.request.port))
            flow.server_conn.via = via

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        """The CONNECT to an account's proxy carries the proxy's credentials. mitmproxy tunnels every proxied
        connection through a new flow and connection of its own, so credentials are found by proxy address
        (accounts that share a proxy address share its credentials; a SOCKS bridge's are this process's token)."""
        address = flow.server_conn.address
        authorization = self._proxy_authorization.get(address) if address is not None else None
        if authorization:
            flow.request.headers["proxy-authorization"] = authorization

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or state.key is None or not state.route.is_relayed:
            return
        runtime = self.shared.current()
        if state.client_request is None:
            await self._admit(flow, state, runtime)
            state.switches_left = runtime.settings.failover_max_switches
            headers = flow.request.headers
            # The client's credentials are gone before anything is kept (a protocol is asked with lowercase names).
            dropped = state.protocol.is_dropped
            kept = tuple(field for field in headers.fields if not dropped(field[0].decode("latin-1").lower()))
            if len(kept) != len(headers.fields):
                headers.fields = kept
            path = state.protocol.upstream_path(flow.request.path)  # never a team key in its query
            state.client_request = (path, headers.copy(), flow.request.raw_content)
        else:  # sent again after an account failed: from the client's own request, not the last route's
            path, headers, _ = state.client_request
            flow.request.headers = headers.copy()
        flow.request.path = path
        await self._route(flow, state, runtime)

    async def _admit(self, flow: http.HTTPFlow, state: FlowState, runtime: Runtime) -> None:
        """What is decided once per request: its body's checks, the budget reservation, the client, the session."""
        assert state.key is not None
        settings = runtime.settings
        body = None
        if state.route.reads_body:
            raw = flow.request.raw_content or b""
            state.message = state.protocol.parse_request(raw, state.route, flow.request.path)
            check_model(state.key, state.message.model)
            check_priced(state.key, state.message.model, settings.price_overrides)
            if state.route.is_metered:  # Claude Code's token counts carry no system prompt or metadata
                body = state.message.body
                if state.key.limits.budgets_nanousd:
                    await self._reserve(state, runtime, len(flow.request.raw_content or b""))
        state.claude_code = is_claude_code(state.client_headers, body)
        if state.key.limits.claude_code_only and not state.claude_code:
            raise claude_code_only_refused(state.key)
        if state.session is None and body is not None and state.message is not None:
            state.session = state.protocol.body_session(state.message)
            if state.session is not None:
                state.sticky = await runtime.store.sticky_account(state.key.id, state.session)

    async def _route(self, flow: http.HTTPFlow, state: FlowState, runtime: Runtime) -> None:
        """Onto an account that can serve it (one that already failed this request never again)."""
        settings = runtime.settings
        protocol = state.protocol
        account, secret = await self._account_and_secret(state, runtime)

        set_headers(flow.request.headers, protocol.upstream_headers(account, secret, state.client_headers, settings))
        assert state.client_request is not None
        client_body = state.client_request[2]
        if client_body is not None:  # a protocol may send each account a body of its own (Code Assist: its project)
            body = protocol.upstream_body(state.route, state.message, account)
            if body is not None:
                flow.request.content = body  # sets content-length
            elif flow.request.raw_content is not client_body:
                flow.request.raw_content = client_body  # the client's bytes, under its own headers again

        reach = opened(account, runtime.keyring)  # with its URL credentials: used here, never kept on the flow
        target = target_of(reach.base_url or protocol.default_base_url(state.route, settings))
        flow.request.scheme = target.scheme
        flow.request.host = target.host
        flow.request.port = target.port
        if target.path_prefix:
            flow.request.path = target.path_prefix + flow.request.path
        await self._route_via(flow, reach, settings.upstream_connect_timeout_s)
        state.account = account
        state.routed = True

    async def done(self) -> None:
        await self._socks_bridges.close()
