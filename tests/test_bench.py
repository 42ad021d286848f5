"""The benchmark keeps working: a quick run measures every scenario through the relay, with no failed
request and at most four store round trips per request. Its timings are printed, never asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs in CI in a step of its own (make test-slow)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "a. serial",
    "b. requests/s",
    "c. SSE events/s",
    "d. store round trips",
    "e. relay RSS with",
    "f. ",
    "g. bare proxy core",
    "g. relay / bare proxy core SSE events/s",
    "h. failover",
)


def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["scenario"]: row for row in json.loads((tmp_path / "latest.json").read_text())["rows"]}
    for prefix in SCENARIOS:
        assert any(name.startswith(prefix) for name in rows), f"no {prefix!r} row in {list(rows)}"
    failed = [name for name, row in rows.items() if "failed" in name and (row["direct"] or row["relay"])]
    assert not failed, failed
    together = next(row for name, row in rows.items() if name.startswith("e. streams open together"))
    assert together["relay"] == together["direct"] == 100, together
    floor = rows["g. relay / bare proxy core CPU per request"]["relay"]
    assert floor > 1, floor  # the relay's addons cost something on top of the core they run on
    streamed = next(row["relay"] for name, row in rows.items() if name.startswith("g. relay / bare proxy core SSE"))
    assert 0 < streamed < 1, streamed  # the core alone, buffering and metering nothing, streams faster
    for name, row in rows.items():
        if "store round trips" in name:  # under 1 when calls of one loop turn share a write (script_batch.py)
            assert 0 < row["relay"] <= 4, (name, row)
    assert "relay vs direct" in run.stdout


def test_compare_measures_each_tree_under_the_same_load() -> None:
    """`bench.compare` runs one relay per tree at once; here the same tree twice, so both lines come out."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--rounds", "2", "--seconds", "0.5", f"one={ROOT}", f"two={ROOT}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    for label in ("one", "two"):
        line = next(line for line in lines if line.strip().startswith(f"{label} "))
        plain, stream = (float(value) for value in re.findall(r"(?:plain|stream) ([0-9.]+) ms", line))
        assert 0 < plain < stream * 10 and stream > 0, line
