"""The floor under every relay figure: `relay serve`'s proxy core (the same master, cli/lean_master.py, the
same built-in addons, event loop and options) reverse-proxying to the fake upstream with no addon of ours.
It passes an event stream on chunk by chunk as the relay must (mitmproxy alone would buffer the whole
answer first), so its SSE figures are the floor of a streaming proxy, not of a buffering one.

`python -m bench.bare_proxy UPSTREAM_URL` prints `bare proxy listening at HOST:PORT` once it listens.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from mitmproxy import ctx
from mitmproxy import http
from mitmproxy import options
from mitmproxy.addons import core
from mitmproxy.addons import next_layer
from mitmproxy.addons import proxyserver
from mitmproxy.addons import tlsconfig

from cli.lean_master import LeanMaster
from cli.serve import loop_factory


class BareCoreHooks:
    """What the benchmark needs of the core, as one chain entry like the relay's whole chain (each entry costs
    every hook a pass of mitmproxy's dispatch)."""

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        host, port = server.listen_addrs()[0][:2]
        print(f"bare proxy listening at {host}:{port}", flush=True)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


async def run(upstream_url: str) -> None:
    master = LeanMaster(options.Options())
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig())
    master.addons.add(BareCoreHooks())
    master.options.update(mode=[f"reverse:{upstream_url}@127.0.0.1:0"], connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    await master.run()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]), loop_factory=loop_factory())
