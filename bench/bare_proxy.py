"""The floor under every relay figure: `relay serve`'s proxy core (same master, built-in addons, event
loop and options) reverse-proxying to the fake upstream with no addon of ours.

`python -m bench.bare_proxy UPSTREAM_URL` prints `bare proxy listening at HOST:PORT` once it listens.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from mitmproxy import ctx
from mitmproxy import options
from mitmproxy.addons import core
from mitmproxy.addons import next_layer
from mitmproxy.addons import proxyserver
from mitmproxy.addons import tlsconfig
from mitmproxy.master import Master

from cli.serve import loop_factory


class AnnounceListening:
    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        host, port = server.listen_addrs()[0][:2]
        print(f"bare proxy listening at {host}:{port}", flush=True)


async def run(upstream_url: str) -> None:
    master = Master(options.Options())
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig())
    master.addons.add(AnnounceListening())
    master.options.update(mode=[f"reverse:{upstream_url}@127.0.0.1:0"], connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    await master.run()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]), loop_factory=loop_factory())
