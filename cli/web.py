"""`relay web`: the relay under mitmweb, for admins to watch live traffic while debugging.

The same listener, addon chain and dead-end reverse target as `relay serve`, inside mitmweb's master
(its built-in addons and web UI) with ReplayRefusal first and WebRedaction last, so the UI only
ever holds redacted copies of the flows, and only so many. mitmweb runs about thirty built-in
addons: slower than `relay serve`, and not meant for production traffic.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import click
from mitmproxy import options
from mitmproxy.tools.web.master import WebMaster

from addons.bundle import relay_chain
from addons.replay_refusal import ReplayRefusal
from addons.web_redaction import WebRedaction
from cli.context import CliContext
from cli.context import pass_cli_context
from cli.serve import LOG_FORMAT
from cli.serve import accept_on
from cli.serve import check_listener
from cli.serve import listen_modes
from cli.serve import loop_factory
from cli.serve import raise_open_files_limit
from relay_core.runtime import Runtime


async def run_web(runtime: Runtime, sockets: list[socket.socket], forward: list[socket.socket]) -> None:
    settings = runtime.settings
    accept_on(sockets, forward)
    master = WebMaster(options.Options(), with_termlog=False)
    builtin_next_layer = master.addons.get("nextlayer")
    master.addons.remove(builtin_next_layer)  # back after ForwardProxy, which picks the layers inside a tunnel
    master.addons.add(ReplayRefusal(), relay_chain(runtime), WebRedaction(), builtin_next_layer)
    confdir = settings.data_dir / "mitmproxy"
    confdir.mkdir(parents=True, exist_ok=True)
    web_host, _, web_port = settings.web_listen.rpartition(":")
    master.options.update(
        mode=listen_modes(settings, sockets, forward),
        connection_strategy="lazy",
        confdir=str(confdir),
        block_global=False,  # `relay serve` has no such check; clients may come through a load balancer
        web_host=web_host.strip("[]"),
        web_port=int(web_port),
        web_password=settings.web_password or "",  # empty: mitmweb makes a token and logs the login URL
        web_open_browser=False,
        relay_web_max_flows=settings.web_max_flows,
        relay_web_max_body_bytes=settings.web_max_body_bytes,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    await master.run()


@click.command()
@click.option("--listen", default=None, help="proxy host:port (default: RELAY_LISTEN or 127.0.0.1:8080)")
@click.option("--web-listen", default=None, help="UI host:port (default: RELAY_WEB_LISTEN or 127.0.0.1:8081)")
@pass_cli_context
def web(context: CliContext, listen: str | None, web_listen: str | None) -> None:
    """Run the relay under mitmweb to debug live traffic (redacted, bounded)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no line per connection
    logging.getLogger("mitmproxy.tools.web.master").setLevel(logging.INFO)  # "Web server listening at <login URL>"
    given = {"listen": listen, "web_listen": web_listen}
    overrides = {name: value for name, value in given.items() if value}
    sockets, forward = check_listener(context.settings(**overrides), supervising=False, shared_port=False)
    runtime = context.open_runtime(**overrides)
    raise_open_files_limit()
    asyncio.run(run_web(runtime, sockets, forward), loop_factory=loop_factory())
