"""Graceful shutdown: on SIGTERM stop listening, let running requests finish, then exit.

A deploy or `docker stop` must not cut a Claude Code answer in half nor lose its usage. The first
SIGTERM (or SIGINT) closes the listening socket, so new connections go to another relay behind the
load balancer, and `ServiceEndpoints` answers requests arriving on kept-alive connections with a
retryable 503. The process exits when the last running flow has passed every addon's `response`
or `error` hook (this addon comes after the Recorder, so usage is recorded by then) or after
`drain_timeout_s`. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mitmproxy import ctx
from mitmproxy import http

from addons.relay_runtime import RelayRuntime

logger = logging.getLogger(__name__)


class GracefulDrain:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._in_flight: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_task: asyncio.Task[None] | None = None

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.begin_drain)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._in_flight.add(flow.id)
        self._idle.clear()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self._in_flight.discard(flow.id)
        if not self._in_flight:
            self._idle.set()

    def begin_drain(self) -> None:
        if self._drain_task is not None:
            logger.warning("second shutdown signal: exiting without waiting for %d requests", len(self._in_flight))
            ctx.master.shutdown()
            return
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        runtime = self.shared.current()
        runtime.draining = True
        timeout = runtime.settings.drain_timeout_s
        ctx.options.update(server=False)  # closes the listening sockets; open connections stay
        logger.info("shutting down: waiting up to %ds for %d running requests", timeout, len(self._in_flight))
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning("drain timeout: exiting with %d requests still running", len(self._in_flight))
        await runtime.drain()
        ctx.master.shutdown()
