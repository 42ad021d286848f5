"""The measured scenarios. Direct and relay rounds alternate, so drift (CPU boost, noisy neighbours)
hits both sides alike instead of biasing whichever ran second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import Conn
from bench.load import Reply
from bench.load import Tally
from bench.load import Target
from bench.load import closed_loop
from bench.load import open_conns
from bench.load import percentile
from bench.load import serial
from bench.procs import memory_kib
from relay_core.store.server_stats import ServerStats

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OWN_COMMANDS = {"info", "config|resetstat"}


@dataclass(frozen=True)
class Config:
    duration: float = 5.0  # seconds of closed-loop load per side, per load scenario
    rounds: int = 4  # alternating direct/relay stretches the duration is split into
    concurrency: int = 20
    serial_requests: int = 300
    serial_warmup: int = 50
    serial_rounds: int = 6
    ttfb_streams: int = 300  # serial streams per side for time to first byte (p50 of 100 moved by 0.5 ms)
    store_batch: int = 200
    store_concurrency: int = 10
    deltas: int = 20
    open_streams: int = 500
    hold_s: float = 8.0  # how long each of the open streams stays open
    pace_s: float = 0.005  # paced streams (time to first byte): the rest of the stream this much later


@dataclass
class Row:
    """One table line. `compare` is "added" (relay - direct), "ratio" (relay / direct) or ""."""

    scenario: str
    direct: float | None
    relay: float | None
    compare: str = ""


def alternate(round_no: int, targets: tuple[Target, Target]) -> tuple[Target, ...]:
    return targets if round_no % 2 == 0 else targets[::-1]


def ms(seconds: float) -> float:
    return seconds * 1000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def require_ok(replies: list[Reply], target: Target) -> None:
    bad = [r for r in replies if r.status != 200]
    if bad:
        raise RuntimeError(f"{target.name}: {len(bad)} failed requests, first: {bad[0].status} {bad[0].body[:300]!r}")


@contextlib.contextmanager
def cpu_meter(pid: int, into: list[float]) -> Iterator[None]:
    """Adds the CPU time `pid` spends inside the block to `into[0]`."""
    before = cpu_seconds(pid)
    yield
    into[0] += cpu_seconds(pid) - before


class Scenarios:
    def __init__(self, direct: Target, relay: Target, relay_pid: int, valkey_url: str, cfg: Config) -> None:
        self.direct = direct
        self.relay = relay
        self.pair = (direct, relay)
        self.relay_pid = relay_pid
        self.valkey_url = valkey_url
        self.cfg = cfg
        self.details: dict[str, Any] = {}

    async def serial_latency(self) -> list[Row]:
        """a. One keep-alive connection, one request at a time: the latency the relay adds."""
        cfg = self.cfg
        conns = {t.name: Conn(t.port) for t in self.pair}
        latencies: dict[str, list[float]] = {t.name: [] for t in self.pair}
        try:
            for t in self.pair:
                require_ok(await serial(conns[t.name], t.plain, cfg.serial_warmup), t)
            for i in range(cfg.serial_rounds):
                for t in alternate(i, self.pair):
                    replies = await serial(conns[t.name], t.plain, cfg.serial_requests // cfg.serial_rounds)
                    require_ok(replies, t)
                    latencies[t.name] += [r.total_s for r in replies]
        finally:
            for conn in conns.values():
                conn.close()
        d, r = latencies[self.direct.name], latencies[self.relay.name]
        return [
            Row("a. serial latency p50 (ms)", ms(percentile(d, 50)), ms(percentile(r, 50)), "added"),
            Row("a. serial latency p99 (ms)", ms(percentile(d, 99)), ms(percentile(r, 99)), "added"),
        ]

    async def _load(self, stream: bool) -> tuple[dict[str, Tally], float]:
        """Closed-loop load at `concurrency` on both sides; also the relay's CPU seconds per request."""
        cfg = self.cfg
        conns = {t.name: await open_conns(t.port, cfg.concurrency) for t in self.pair}
        tallies = {t.name: Tally() for t in self.pair}
        relay_cpu = [0.0]
        try:
            for t in self.pair:  # warm every connection (and the relay's upstream connections)
                for conn in conns[t.name]:
                    require_ok([await conn.send(t.stream if stream else t.plain)], t)
            for i in range(cfg.rounds):
                for t in alternate(i, self.pair):
                    raw = t.stream if stream else t.plain
                    if t is self.relay:
                        with cpu_meter(self.relay_pid, relay_cpu):
                            tally = await closed_loop(conns[t.name], raw, cfg.duration / cfg.rounds)
                    else:
                        tally = await closed_loop(conns[t.name], raw, cfg.duration / cfg.rounds)
                    tallies[t.name].merge(tally)
        finally:
            for group in conns.values():
                for conn in group:
                    conn.close()
        relay_ok = tallies[self.relay.name].ok
        return tallies, relay_cpu[0] / relay_ok if relay_ok else float("nan")

    def _note_errors(self, label: str, tallies: dict[str, Tally]) -> None:
        self.details[label] = {
            name: {"ok": t.ok, "errors": t.errors, "first_error": t.first_error, "seconds": t.seconds}
            for name, t in tallies.items()
        }

    async def throughput(self) -> list[Row]:
        """b. Small non-streamed requests on `concurrency` keep-alive connections."""
        tallies, cpu = await self._load(stream=False)
        self._note_errors("throughput", tallies)
        d, r = tallies[self.direct.name], tallies[self.relay.name]
        n = self.cfg.concurrency
        return [
            Row(f"b. requests/s @{n}", d.per_second, r.per_second, "ratio"),
            Row(f"b. latency p50 @{n} (ms)", ms(percentile(d.latencies, 50)), ms(percentile(r.latencies, 50)), "added"),
            Row("b. relay CPU per request (ms)", None, ms(cpu)),
            Row("b. failed requests", d.errors, r.errors),
        ]

    async def streams(self) -> list[Row]:
        """c. Streams at `concurrency`, then serial streams for time to first byte."""
        tallies, cpu = await self._load(stream=True)
        self._note_errors("streams", tallies)
        d, r = tallies[self.direct.name], tallies[self.relay.name]
        n = self.cfg.concurrency
        rows = [
            Row(f"c. streams/s @{n}", d.per_second, r.per_second, "ratio"),
            Row(f"c. SSE events/s @{n}", d.events_per_second, r.events_per_second, "ratio"),
            Row("c. relay CPU per stream (ms)", None, ms(cpu)),
            Row("c. failed streams", d.errors, r.errors),
        ]
        return rows + await self._stream_ttfb()

    async def _stream_ttfb(self) -> list[Row]:
        """Serial streams. Time to first byte is measured on paced streams (the upstream sends the head
        and the first events, the rest `pace_s` later, as a model does): when a whole stream arrives in
        one read, the relay handles all of it, the response hooks included, before the event loop
        flushes the head (uvloop sends writes once per loop iteration), so the head would wait for the
        whole stream. The whole-stream row uses unpaced streams."""
        cfg = self.cfg
        paced = {
            t.name: t.stream.replace(b"?beta=true", f"?beta=true&hold={cfg.pace_s}".encode(), 1) for t in self.pair
        }
        first = await self._serial_streams(paced)
        whole = await self._serial_streams({t.name: t.stream for t in self.pair})
        d, r = self.direct.name, self.relay.name

        def p50(rs: list[Reply], attr: str) -> float:
            return ms(percentile([getattr(x, attr) for x in rs], 50))

        return [
            Row("c. serial stream TTFB p50 (ms)", p50(first[d], "headers_s"), p50(first[r], "headers_s"), "added"),
            Row(
                "c. serial first SSE event p50 (ms)",
                p50(first[d], "first_body_s"),
                p50(first[r], "first_body_s"),
                "added",
            ),
            Row("c. serial whole stream p50 (ms)", p50(whole[d], "total_s"), p50(whole[r], "total_s"), "added"),
        ]

    async def _serial_streams(self, raw: dict[str, bytes]) -> dict[str, list[Reply]]:
        cfg = self.cfg
        conns = {t.name: Conn(t.port) for t in self.pair}
        replies: dict[str, list[Reply]] = {t.name: [] for t in self.pair}
        try:
            for t in self.pair:
                require_ok(await serial(conns[t.name], raw[t.name], 10), t)
            rounds = cfg.serial_rounds
            for i in range(rounds):
                for t in alternate(i, self.pair):
                    batch = await serial(conns[t.name], raw[t.name], cfg.ttfb_streams // rounds)
                    require_ok(batch, t)
                    replies[t.name] += batch
        finally:
            for conn in conns.values():
                conn.close()
        return replies

    async def store_round_trips(self) -> list[Row]:
        """d. Store work per relay request, and the upstream connections the relay opened for them."""
        client = ServerStats(self.valkey_url)
        rows: list[Row] = []
        try:
            for stream in (False, True):
                label = "stream" if stream else "plain"
                per_request, round_trips, upstream_conns = await self._store_batch(client, stream)
                self.details[f"store_commands_per_request_{label}"] = per_request
                rows += [
                    Row(f"d. store commands/{label} request (incl. in Lua)", None, sum(per_request.values())),
                    Row(f"d. store round trips/{label} request", None, round_trips),
                    Row(f"d. upstream connects/{label} request", None, upstream_conns),
                ]
        finally:
            client.close()
        return rows

    async def _store_batch(self, client: ServerStats, stream: bool) -> tuple[dict[str, float], float, float]:
        """`store_batch` relay requests on fresh connections, `store_concurrency` at a time.

        Round trips are the socket reads the server processed (a pipeline or a script call arrives
        in one read), less this client's own; commandstats also counts commands run inside Lua.
        """
        cfg = self.cfg
        raw = self.relay.stream if stream else self.relay.plain
        per_conn = cfg.store_batch // cfg.store_concurrency
        count = per_conn * cfg.store_concurrency
        upstream_before = await self._upstream_stats()
        client.reset()
        reads_before = client.reads_processed()
        conns = await open_conns(self.relay.port, cfg.store_concurrency)
        try:
            batches = await asyncio.gather(*(serial(c, raw, per_conn) for c in conns))
        finally:
            for conn in conns:
                conn.close()
        for batch in batches:
            require_ok(batch, self.relay)
        await asyncio.sleep(1.0)  # usage and lease release are written after the response
        calls = client.command_calls()
        own_reads = 2  # the commandstats INFO above and the stats INFO below
        round_trips = (client.reads_processed() - reads_before - own_reads) / count
        upstream_after = await self._upstream_stats()
        per_request = {name: n / count for name, n in calls.items() if name not in OWN_COMMANDS}
        # the second stats request opened one upstream connection itself
        connects = (upstream_after["connections"] - upstream_before["connections"] - 1) / count
        return dict(sorted(per_request.items(), key=lambda kv: -kv[1])), round_trips, connects

    async def _upstream_stats(self) -> dict[str, int]:
        conn = Conn(self.direct.port)
        try:
            reply = await conn.send(b"GET /stats HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        finally:
            conn.close()
        return json.loads(reply.body)

    async def open_streams(self) -> list[Row]:
        """e. `open_streams` streams open at once (each held `hold_s` by the upstream): relay memory."""
        cfg = self.cfg
        rows: list[Row] = []
        results: dict[str, list[Reply]] = {}
        peak_rss = 0.0
        for t in self.pair:
            raw = t.stream.replace(b"?beta=true", f"?beta=true&hold={cfg.hold_s}".encode(), 1)
            conns = await open_conns(t.port, cfg.open_streams)
            try:
                sends = asyncio.gather(*(c.send(raw) for c in conns))
                while not sends.done():
                    if t is self.relay:
                        peak_rss = max(peak_rss, memory_kib(self.relay_pid)["VmRSS"] / 1024)
                    await asyncio.wait([sends], timeout=0.25)
                results[t.name] = sends.result()
            finally:
                for conn in conns:
                    conn.close()
        d, r = results[self.direct.name], results[self.relay.name]

        def overlapped(replies: list[Reply]) -> int:
            """Streams that completed and were open for the whole hold, so all were open together."""
            return sum(1 for x in replies if x.status == 200 and x.total_s >= cfg.hold_s * 0.95)

        rows += [
            Row(f"e. streams open together (of {cfg.open_streams})", overlapped(d), overlapped(r)),
            Row(f"e. relay RSS with {cfg.open_streams} open streams (MiB)", None, peak_rss),
        ]
        return rows

    async def workers_vs_one(self, workers: Target, count: int, upstream_pid: int) -> list[Row]:
        """f. Small requests at `concurrency` through `relay serve --workers N` vs one relay process.

        The relay shares the machine's cores with the load generator, the fake upstream and Valkey; their CPU
        per request, measured here too, bounds what N workers can reach: at most cores / (relay's + theirs)
        requests/s, the ceiling row (as a multiple of one process's requests/s)."""
        cfg = self.cfg
        targets = (self.direct, self.relay, workers)
        conns = {t.name: await open_conns(t.port, cfg.concurrency) for t in targets}
        tallies = {t.name: Tally() for t in targets}
        relay_cpu, helpers_cpu = [0.0], [0.0]
        stats = ServerStats(self.valkey_url)
        try:
            for t in targets:
                for conn in conns[t.name]:
                    require_ok([await conn.send(t.plain)], t)
            for i in range(cfg.rounds):
                for t in targets[i % 3 :] + targets[: i % 3]:
                    helpers_before = time.process_time() + cpu_seconds(upstream_pid) + stats.cpu_seconds()
                    with cpu_meter(self.relay_pid, relay_cpu) if t is self.relay else contextlib.nullcontext():
                        tallies[t.name].merge(await closed_loop(conns[t.name], t.plain, cfg.duration / cfg.rounds))
                    if t is workers:
                        helpers_after = time.process_time() + cpu_seconds(upstream_pid) + stats.cpu_seconds()
                        helpers_cpu[0] += helpers_after - helpers_before
        finally:
            stats.close()
            for group in conns.values():
                for conn in group:
                    conn.close()
        self._note_errors("workers", tallies)
        d, one, many = (tallies[t.name].per_second for t in targets)
        n = cfg.concurrency
        relay_ms = ms(relay_cpu[0] / tallies[self.relay.name].ok) if tallies[self.relay.name].ok else float("nan")
        helpers_ms = ms(helpers_cpu[0] / tallies[workers.name].ok) if tallies[workers.name].ok else float("nan")
        ceiling = (os.cpu_count() or 1) / ((relay_ms + helpers_ms) / 1000) / one if one else float("nan")
        return [
            Row(f"f. requests/s @{n}, --workers {count}", d, many, "ratio"),
            Row(f"f. requests/s @{n}, {count} workers / 1 process", None, many / one if one else float("nan")),
            Row("f. load generator, upstream and store CPU per request (ms)", None, helpers_ms),
            Row(f"f. ceiling on {os.cpu_count()} cores for workers / 1 process", None, min(float(count), ceiling)),
        ]

    async def _side_by_side(
        self, label: str, targets: tuple[Target, ...], pids: dict[str, int]
    ) -> tuple[dict[str, float], dict[str, Tally], dict[str, float]]:
        """Serial requests, then closed-loop load, each target in turn in rotating order: the serial p50
        (ms) and the load's tally of each target, and the CPU ms per request of those with a pid."""
        cfg = self.cfg
        serial_conns = {t.name: Conn(t.port) for t in targets}
        latencies: dict[str, list[float]] = {t.name: [] for t in targets}
        try:
            for t in targets:
                require_ok(await serial(serial_conns[t.name], t.plain, 20), t)
            for i in range(cfg.serial_rounds):
                for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                    batch = await serial(serial_conns[t.name], t.plain, cfg.serial_requests // cfg.serial_rounds)
                    require_ok(batch, t)
                    latencies[t.name] += [x.total_s for x in batch]
        finally:
            for conn in serial_conns.values():
                conn.close()
        tallies, cpu = await self._rotating_load(label, targets, pids, stream=False)
        p50 = {name: ms(percentile(values, 50)) for name, values in latencies.items()}
        per_request = {name: ms(cpu[name] / tallies[name].ok) if tallies[name].ok else float("nan") for name in pids}
        return p50, tallies, per_request

    async def _rotating_load(
        self, label: str, targets: tuple[Target, ...], pids: dict[str, int], stream: bool
    ) -> tuple[dict[str, Tally], dict[str, float]]:
        """Closed-loop load on each target in turn, in rotating order: each one's tally, and the CPU seconds
        of those with a pid."""
        cfg = self.cfg
        cpu = {name: [0.0] for name in pids}
        loads = {t.name: await open_conns(t.port, cfg.concurrency) for t in targets}
        tallies = {t.name: Tally() for t in targets}
        try:
            for i in range(cfg.rounds):
                for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                    metered = cpu_meter(pids[t.name], cpu[t.name]) if t.name in pids else contextlib.nullcontext()
                    raw = t.stream if stream else t.plain
                    with metered:
                        tallies[t.name].merge(await closed_loop(loads[t.name], raw, cfg.duration / cfg.rounds))
        finally:
            for group in loads.values():
                for conn in group:
                    conn.close()
        self._note_errors(label, tallies)
        return tallies, {name: seconds for name, (seconds,) in cpu.items()}

    async def bare_proxy(self, bare: Target, bare_pid: int) -> list[Row]:
        """g. The small-request scenarios (a, b) through `relay serve`'s proxy core without the relay's addons,
        with each one's CPU per request under the same load, and streams at the same concurrency: the floor
        under the relay's."""
        targets = (self.direct, self.relay, bare)
        pids = {self.relay.name: self.relay_pid, bare.name: bare_pid}
        p50, tallies, per_request = await self._side_by_side("bare proxy core", targets, pids)
        d, relay, plain = (tallies[t.name].per_second for t in targets)
        n = self.cfg.concurrency
        relay_cpu, bare_cpu = per_request[self.relay.name], per_request[bare.name]
        streamed, _ = await self._rotating_load("bare proxy core streams", (self.relay, bare), {}, stream=True)
        relay_events, bare_events = (streamed[t.name].events_per_second for t in (self.relay, bare))
        return [
            Row("g. bare proxy core CPU per request (ms)", None, bare_cpu),
            Row("g. relay / bare proxy core CPU per request", None, relay_cpu / bare_cpu if bare_cpu else float("nan")),
            Row("g. bare proxy core serial latency p50 (ms)", p50[self.direct.name], p50[bare.name], "added"),
            Row("g. relay's own addons, serial p50 (ms)", None, p50[self.relay.name] - p50[bare.name]),
            Row(f"g. bare proxy core requests/s @{n}", d, plain, "ratio"),
            Row(f"g. relay / bare proxy core requests/s @{n}", None, relay / plain if plain else float("nan")),
            # The core alone, streaming each event on as it comes but metering nothing: the most a relay process
            # can stream here.
            Row(f"g. bare proxy core SSE events/s @{n}", None, bare_events),
            Row(
                f"g. relay / bare proxy core SSE events/s @{n}",
                None,
                relay_events / bare_events if bare_events else float("nan"),
            ),
        ]

    async def failover(self, failover: Target, failover_pid: int) -> list[Row]:
        """h. Small requests whose first account answers 529, so the relay sends each again on a healthy
        one (bench/stack.py: failover_relay), against the plain relay in the same interleaved rounds:
        the serial latency and the CPU one in-relay failover adds."""
        targets = (self.relay, failover)
        pids = {self.relay.name: self.relay_pid, failover.name: failover_pid}
        p50, _, per_request = await self._side_by_side("failover", targets, pids)
        plain_cpu, failover_cpu = per_request[self.relay.name], per_request[failover.name]
        return [
            Row("h. failover: serial p50, first account 529 (ms)", None, p50[failover.name]),
            Row("h. failover: added to the relay's serial p50 (ms)", None, p50[failover.name] - p50[self.relay.name]),
            Row("h. failover: relay CPU per request (ms)", None, failover_cpu),
            Row(
                "h. failover / plain relay CPU per request",
                None,
                failover_cpu / plain_cpu if plain_cpu else float("nan"),
            ),
        ]

    def memory(self) -> dict[str, float]:
        """e. The relay's resident memory now and at its peak, in MiB."""
        kib = memory_kib(self.relay_pid)
        return {"rss": kib["VmRSS"] / 1024, "peak": kib["VmHWM"] / 1024}
