"""Profile the relay's hot path: `python -m bench.profile [--seconds N] [--stream] [--bare]` (needs py-spy).

Starts the benchmark's stack, drives closed-loop load through the relay and samples the relay
process with py-spy meanwhile; prints the functions with the most samples, inclusive and self.
`--bare` does the same to the bare proxy core (bench/bare_proxy.py), the floor under the relay: two
profiles subtract per request (a share times the CPU per request). The raw collapsed stacks stay
under bench/results/ for a flame graph (e.g. speedscope.app).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench.load import Target
from bench.load import closed_loop
from bench.load import open_conns
from bench.scenarios import cpu_seconds
from bench.stack import bare_proxy
from bench.stack import running_stack

RESULTS = Path(__file__).parent / "results"


def summarize(collapsed: Path, top: int) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed (raw) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0] for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "", "inclusive  self   function"]
    for frame, n in inclusive.most_common(top):
        lines.append(f"{100 * n / total:8.1f}% {100 * own[frame] / total:5.1f}%  {frame}")
    lines += ["", "self-time leaders:"]
    for frame, n in own.most_common(top // 2):
        lines.append(f"{100 * n / total:8.1f}%  {frame}")
    return "\n".join(lines)


async def profile(seconds: float, stream: bool, concurrency: int, top: int, bare: bool) -> str:
    async with running_stack(deltas=20) as stack:
        if not bare:
            return await sample(stack.relay_port, stack.relay.pid, stack.team_key, seconds, stream, concurrency, top)
        with bare_proxy(stack) as (port, pid):
            return await sample(port, pid, stack.team_key, seconds, stream, concurrency, top, "bare-")


async def sample(
    port: int, pid: int, team_key: str, seconds: float, stream: bool, concurrency: int, top: int, prefix: str = ""
) -> str:
    """Closed-loop load on the proxy at `port` while py-spy samples process `pid`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proxy = Target.make("proxy", port, team_key)
    conns = await open_conns(proxy.port, concurrency)
    raw = proxy.stream if stream else proxy.plain
    await closed_loop(conns, raw, 1.0)  # warm up
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{prefix}{'stream' if stream else 'plain'}.txt"
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    spy = subprocess.Popen(
        [*command, "--rate", "100", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cpu_before = cpu_seconds(pid)
    tally = await closed_loop(conns, raw, seconds)
    cpu_ms = (cpu_seconds(pid) - cpu_before) / tally.ok * 1000 if tally.ok else float("nan")
    _, err = await asyncio.to_thread(spy.communicate)
    for conn in conns:
        conn.close()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode()}")
    kind = "stream" if stream else "request"
    rate = f"{tally.per_second:.0f} {kind}s/s at {concurrency} while sampled, {cpu_ms:.3f} CPU-ms per {kind}"
    return rate + "\n" + summarize(out, top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of small JSON ones")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--bare", action="store_true", help="sample the bare proxy core (the floor) instead")
    args = parser.parse_args(argv)
    print(asyncio.run(profile(args.seconds, args.stream, args.concurrency, args.top, args.bare)))


if __name__ == "__main__":
    main()
