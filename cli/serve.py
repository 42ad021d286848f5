"""`relay serve`: mitmproxy's proxy core with only the built-in addons the relay needs, plus ours.

mitmdump loads about thirty built-in addons and every hook visits each of them; the relay needs
four. The reverse-proxy target is a dead end on purpose: only the router sends flows anywhere.
With `--workers N` a supervisor (cli/workers.py) runs N of these on one SO_REUSEPORT port. With
`forward_listen` the same process also serves a forward-proxy listener (first-party mode,
addons/forward_proxy.py) in mitmproxy's regular mode, on a socket bound here as well.
The listening socket is bound here before the proxy starts, and the TLS certificate read, so that a
relay that cannot serve says why in one line and exits non-zero (relay_core/listener.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from mitmproxy import options
from mitmproxy.addons import core
from mitmproxy.addons import next_layer
from mitmproxy.addons import proxyserver
from mitmproxy.addons import tlsconfig
from mitmproxy.proxy import mode_servers

from addons.bundle import relay_chain
from cli.ca import ensure_ca
from cli.context import CliContext
from cli.context import pass_cli_context
from cli.lean_master import LeanMaster
from cli.workers import Supervisor
from relay_core.listener import ListenerError
from relay_core.listener import bind_listener
from relay_core.listener import check_port_free
from relay_core.listener import forward_proxy_warning
from relay_core.listener import load_listener_certificate
from relay_core.listener import plain_http_warning
from relay_core.log_buffer import SecondCachedFormatter
from relay_core.log_buffer import TurnBufferedHandler
from relay_core.request_log import REQUEST_LOGGER
from relay_core.runtime import Runtime
from relay_core.settings import Settings

DEAD_END_TARGET = "http://127.0.0.1:9"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
logger = logging.getLogger(__name__)


async def run_proxy(runtime: Runtime, sockets: list[socket.socket], forward: list[socket.socket] | None = None) -> None:
    """Serve on `sockets` (base URL) and `forward` (the forward-proxy listener, if any), bound by check_listener."""
    settings = runtime.settings
    forward = forward or []
    accept_on(sockets, forward)
    master = LeanMaster(options.Options())
    master.addons.add(core.Core(), proxyserver.Proxyserver(), tlsconfig.TlsConfig())
    master.addons.add(relay_chain(runtime, warn_plain_http=False))
    master.addons.add(next_layer.NextLayer())  # after ForwardProxy, which picks the layers inside a tunnel itself
    confdir = settings.data_dir / "mitmproxy"
    confdir.mkdir(parents=True, exist_ok=True)
    master.options.update(
        mode=listen_modes(settings, sockets, forward), connection_strategy="lazy", confdir=str(confdir)
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    await master.run()


def listen_modes(settings: Settings, sockets: list[socket.socket], forward: list[socket.socket]) -> list[str]:
    """mitmproxy's modes: the base URL as a reverse proxy to the dead end, and the forward-proxy listener in
    regular mode when there is one (first-party mode, addons/forward_proxy.py)."""
    modes = [f"reverse:{DEAD_END_TARGET}@{settings.listen_host}:{sockets[0].getsockname()[1]}"]
    if forward:
        modes.append(f"regular@{settings.forward_host}:{forward[0].getsockname()[1]}")
    return modes


def run_optimized() -> None:
    """Run this command again under `python -O` unless PYTHONOPTIMIZE is set (`PYTHONOPTIMIZE=0` opts out).

    With `__debug__` on, mitmproxy type-checks every HTTP message and proxy event it handles: about a
    tenth of the relay's CPU per request (docs/profile.md). The relay's own asserts only narrow types.
    The process keeps its pid and, started as `relay`, its name; workers inherit the variable. Only a
    process started to run the CLI is replaced, never one that calls `serve` in-process.
    """
    if os.environ.get("PYTHONOPTIMIZE") or sys.flags.optimize:
        return
    environment = {**os.environ, "PYTHONOPTIMIZE": "1"}
    started_as = Path(sys.argv[0])
    if started_as.name == "relay" and started_as.is_file():  # the console script: its shebang runs Python
        os.execve(started_as, sys.argv, environment)
    if started_as.resolve() == Path(__file__).with_name("main.py").resolve():  # python -m cli.main
        os.execve(sys.executable, [sys.executable, "-O", *sys.orig_argv[1:]], environment)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no line per connection
    # No format here shows where, in which thread or task a line was logged: skip finding out (the
    # logging HOWTO's "Optimization" list); the process id stays.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+, not in typeshed
    # The line per request goes straight to stderr: through the root logger mitmproxy would also turn
    # each into a deprecated `add_log` event, a cross-thread loop wake-up and a hook call per addon.
    # The lines of one loop turn go out in one write (relay_core/log_buffer.py).
    request_log = logging.getLogger(REQUEST_LOGGER)
    if not request_log.handlers:
        handler = TurnBufferedHandler()
        handler.setFormatter(SecondCachedFormatter(LOG_FORMAT))
        request_log.addHandler(handler)
    request_log.propagate = False


def raise_open_files_limit() -> None:
    """Each open stream holds two sockets (client and upstream); a soft limit of 1024 caps a relay
    near 500 streams, so take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def accept_on(sockets: list[socket.socket], forward: list[socket.socket]) -> None:
    """Make mitmproxy's reverse-proxy server (and its forward-proxy one) accept on sockets bound beforehand
    instead of binding their own."""

    def accepting(bound: list[socket.socket]) -> Callable[..., Coroutine[Any, Any, list[asyncio.Server]]]:
        async def listen(self: mode_servers.AsyncioServerInstance[Any], host: str, port: int) -> list[asyncio.Server]:
            return [await asyncio.start_server(self.handle_stream, sock=sock) for sock in bound]

        return listen

    mode_servers.ReverseInstance.listen = accepting(sockets)  # type: ignore[method-assign, assignment]
    mode_servers.RegularInstance.listen = accepting(forward)  # type: ignore[method-assign, assignment]


def check_listener(
    settings: Settings, supervising: bool, shared_port: bool
) -> tuple[list[socket.socket], list[socket.socket]]:
    """Read the TLS pair and take the ports (a supervisor only checks they are free): the bound sockets of the
    base-URL listener and of the forward-proxy one (none when it is off), or exit."""
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            load_listener_certificate(settings.tls_cert, settings.tls_key)
        addresses = [(settings.listen_host, settings.listen_port)]
        if settings.forward_listen is not None:
            addresses.append((settings.forward_host, settings.forward_port))
        if supervising:
            for host, port in addresses:
                if port:
                    check_port_free(host, port)
            return [], []
        bound = [bind_listener(host, port, shared_port) for host, port in addresses]
        return bound[0], bound[1] if len(bound) > 1 else []
    except ListenerError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--listen", default=None, help="host:port (default: RELAY_LISTEN or 127.0.0.1:8080)")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="relay processes sharing the port (default: RELAY_WORKERS or 1)",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    default=None,
    help="serve HTTPS with this PEM certificate (intermediates after it; default: RELAY_TLS_CERT)",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path),
    default=None,
    help="the certificate's PEM private key, no passphrase (default: RELAY_TLS_KEY)",
)
@click.option(
    "--forward-listen",
    default=None,
    help="host:port of the forward-proxy listener for HTTPS_PROXY (first-party mode; default: RELAY_FORWARD_LISTEN,"
    " unset: off)",
)
@click.option("--shared-port", is_flag=True, hidden=True, help="bind with SO_REUSEPORT (set by the supervisor)")
@pass_cli_context
def serve(
    context: CliContext,
    listen: str | None,
    workers: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    forward_listen: str | None,
    shared_port: bool,
) -> None:
    """Run the relay."""
    run_optimized()
    configure_logging()
    given = {"listen": listen, "tls_cert": tls_cert, "tls_key": tls_key, "forward_listen": forward_listen}
    overrides = {name: value for name, value in given.items() if value is not None}
    settings = context.settings(**overrides)
    workers = workers or settings.workers
    supervising = workers > 1 and not shared_port
    sockets, forward = check_listener(settings, supervising, shared_port)
    if not shared_port:  # once per relay, not per worker
        port = sockets[0].getsockname()[1] if sockets else settings.listen_port
        warnings = [plain_http_warning(settings.listen_host, port, tls=settings.tls_cert is not None)]
        if settings.forward_listen is not None:
            warnings.append(forward_proxy_warning(settings.forward_host, settings.forward_allow_hosts))
        for warning in filter(None, warnings):
            logger.warning(warning)
        # The CA of the forward listener (and of TLS without tls_cert), made once here: workers starting
        # together would each make one of their own, and all but one would mint with a CA nobody trusts.
        ensure_ca(settings.data_dir / "mitmproxy")
    runtime = context.open_runtime(**overrides)
    if supervising:
        raise SystemExit(Supervisor(runtime, workers).run())
    raise_open_files_limit()
    asyncio.run(run_proxy(runtime, sockets, forward), loop_factory=loop_factory())
    if runtime.refused:  # logged already; a service manager must see the failure
        raise SystemExit(1)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed and compatible with mitmproxy's eager task factory, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return None

    async def probe() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        await asyncio.create_task(asyncio.sleep(0), name="probe")

    try:
        asyncio.run(probe(), loop_factory=uvloop.new_event_loop)
    except TypeError:
        logger.warning(
            "uvloop %s cannot run mitmproxy's eager tasks; using asyncio's loop", importlib.metadata.version("uvloop")
        )
        return None
    return uvloop.new_event_loop
