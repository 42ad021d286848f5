"""Turns scenario rows into the printed table and the JSON record, with the machine they ran on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.procs import ROOT
from bench.scenarios import Row

RESULTS = ROOT / "bench" / "results"


def number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def comparison(row: Row) -> str:
    if row.direct is None or row.relay is None:
        return ""
    if row.compare == "added":
        return f"{row.relay - row.direct:+.2f} ms"
    if row.compare == "ratio" and row.direct:
        return f"{row.relay / row.direct:.2f}x"
    return ""


def table(rows: list[Row]) -> str:
    body = [(r.scenario, number(r.direct), number(r.relay), comparison(r)) for r in rows]
    return tabulate(
        body,
        headers=["scenario", "direct", "relay", "relay vs direct"],
        colalign=("left", "right", "right", "right"),
        disable_numparse=True,
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """Enough to tell whether two result files are comparable."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mitmproxy": metadata.version("mitmproxy"),
        "git": _git_revision(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_results(
    rows: list[Row], config: Any, details: dict[str, Any], relay_log: str, elapsed: float, into: Path = RESULTS
) -> Path:
    """latest.json, plus the tail of the relay's log beside it for a look at what it did."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "relay-latest.log").write_text(relay_log)
    path = into / "latest.json"
    record = {
        "machine": machine(),
        "config": dataclasses.asdict(config),
        "elapsed_s": round(elapsed, 1),
        "rows": [{**dataclasses.asdict(r), "relay_vs_direct": comparison(r)} for r in rows],
        "details": details,
    }
    path.write_text(json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
    return path


def _finite(value: Any) -> Any:
    """NaN (a percentile of nothing) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
