"""Benchmark the relay against direct calls to a fast fake upstream: `python -m bench.run [--quick]`.

Everything runs on loopback; every process the run starts (Valkey, fake upstream, relay) is stopped
when it ends, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench.load import Conn
from bench.load import Target
from bench.report import RESULTS
from bench.report import table
from bench.report import write_results
from bench.scenarios import Config
from bench.scenarios import Row
from bench.scenarios import Scenarios
from bench.stack import bare_proxy
from bench.stack import failover_relay
from bench.stack import running_stack
from bench.stack import workers_relay

WORKERS = 2  # one per core of the reference machine
QUICK = Config(
    duration=1.0,
    rounds=2,
    serial_requests=120,
    serial_warmup=20,
    serial_rounds=4,
    ttfb_streams=40,
    store_batch=100,
    open_streams=100,
    hold_s=3.0,
)


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (well under 30 s)")
    parser.add_argument("--duration", type=float, help="seconds of load per side in each load scenario")
    parser.add_argument("--concurrency", type=int, help="connections in the load scenarios (default 20)")
    parser.add_argument("--deltas", type=int, help="content_block_delta events per stream (default 20)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"directory of latest.json (default {RESULTS})")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    overrides = {
        name: getattr(args, name) for name in ("duration", "concurrency", "deltas") if getattr(args, name) is not None
    }
    return dataclasses.replace(cfg, **overrides), args.results


async def check_relay(relay: Target) -> None:
    """Fail fast with the relay's own answer when it does not relay at all."""
    conn = Conn(relay.port)
    try:
        reply = await conn.send(relay.plain)
    finally:
        conn.close()
    if reply.status != 200:
        raise RuntimeError(f"relay answered {reply.status}: {reply.body[:500]!r}")


async def bench(cfg: Config) -> tuple[list[Row], dict[str, Any], str]:
    async with running_stack(cfg.deltas) as stack:
        direct = Target.make("direct", stack.upstream_port, stack.team_key)
        relay = Target.make("relay", stack.relay_port, stack.team_key)
        scenarios = Scenarios(direct, relay, stack.relay.pid, stack.valkey_url, cfg)
        idle = scenarios.memory()
        await check_relay(relay)
        lines_before = stack.relay.line_count
        rows: list[Row] = []
        for name, step in (
            ("serial latency", scenarios.serial_latency),
            ("throughput", scenarios.throughput),
            ("streams", scenarios.streams),
            ("store round trips", scenarios.store_round_trips),
            ("open streams", scenarios.open_streams),  # before the RSS rows: its peak is theirs too
        ):
            started = time.monotonic()
            rows += await step()
            print(f"  {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        loaded = scenarios.memory()
        rows += [
            Row("e. relay RSS idle (MiB)", None, idle["rss"]),
            Row("e. relay RSS after load (MiB)", None, loaded["rss"]),
            Row("e. relay peak RSS (MiB)", None, loaded["peak"]),
        ]
        started = time.monotonic()
        with workers_relay(stack, WORKERS) as port:
            rows += await scenarios.workers_vs_one(
                Target.make("workers", port, stack.team_key), WORKERS, stack.upstream_pid
            )
        print(f"  workers: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        started = time.monotonic()
        with bare_proxy(stack) as (port, pid):
            rows += await scenarios.bare_proxy(Target.make("bare", port, stack.team_key), pid)
        print(f"  bare proxy core: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        started = time.monotonic()
        async with failover_relay(stack) as (port, pid, key):
            rows += await scenarios.failover(Target.make("failover", port, key), pid)
        print(f"  failover: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        details = {**scenarios.details, "relay_log_lines_during_run": stack.relay.line_count - lines_before}
        return rows, details, stack.relay.log()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the stack's cleanup like Ctrl-C


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    cfg, results = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    print("claude-relay benchmark: starting Valkey, fake upstream and relay ...", file=sys.stderr, flush=True)
    try:
        rows, details, relay_log = asyncio.run(bench(cfg), loop_factory=_loop_factory())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    print(table(rows))
    path = write_results(rows, cfg, details, relay_log, elapsed, results)
    print(f"\n{elapsed:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
