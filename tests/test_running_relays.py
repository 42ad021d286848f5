"""Operating a running relay (issue 18 B): `status` and `doctor` describe the relays that run, not the shell
that asks; /metrics under `--workers 2` sums every worker; refusals carry the key's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from relay_core.models import LimitWindow
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess
from tests.test_metrics import samples
from tests.test_metrics import total
from tests.test_workers import post

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ROOT = Path(__file__).resolve().parent.parent


def scrape(relay: RelayProcess) -> str:
    """One scrape on a connection of its own: under --workers any worker may answer it."""
    with NO_PROXY.open(relay.url + "/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def fresh_shell(relay_env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` in a shell that knows only where the store is: no upstream, no secret, its own data dir."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env.update(
        RELAY_REDIS_URL=relay_env["RELAY_REDIS_URL"],
        RELAY_KEY_PREFIX=relay_env["RELAY_KEY_PREFIX"],
        RELAY_DATA_DIR=str(tmp_path / "shell-data"),
        RELAY_LISTEN="127.0.0.1:9",  # not the relay's: the shell's view differs there too
    )
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def wait_for_record(relay_env: dict[str, str], tmp_path: Path, relay: RelayProcess) -> dict:
    """The status of a fresh shell once the relay's record (beaten once a second) is there."""
    deadline = time.monotonic() + 15
    while True:
        result = fresh_shell(relay_env, tmp_path, "status", "--format", "json")
        report = json.loads(result.stdout)
        if report["relays"] or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def test_ten_scrapes_under_two_workers_are_monotonic_and_equal_the_usage_report(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay("workers", USER_MESSAGE_QUEUE_ENABLED="false")
    alice = admin.create_key("alice")
    admin.update_key("alice", lambda key: key.limits.budgets_nanousd.update(day=5 * 10**9))
    admin.add_account("console", "sk-ant-api03-w")
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: post(relay, alice), range(40))) == {200}
    rows = admin.wait_for_requests(40)
    (usage,) = rows

    counts, texts = [], []
    for _ in range(10):
        text = scrape(relay)
        texts.append(text)
        found = samples(text)
        counts.append(total(found, "relay_requests_total", route="messages", key="alice"))
        assert total(found, "relay_tokens_total", kind="output", key="alice") == usage["output_tokens"]
        assert (
            total(found, "relay_cost_usd_total", key="alice") == usage["cost_usd"]
            or abs(total(found, "relay_cost_usd_total", key="alice") - usage["cost_usd"]) < 1e-9
        )
    assert counts == sorted(counts), counts
    assert counts == [usage["requests"]] * 10 == [40] * 10, counts
    assert all("_created" not in text for text in texts)

    # the new gauges appear, whichever worker answers
    found = samples(texts[-1])
    assert total(found, "relay_account_state", account="console", state="active") == 1
    assert total(found, "relay_account_state", account="console", state="limited") == 0
    assert total(found, "relay_account_cooldown_end_timestamp_seconds", account="console") == 0
    left = total(found, "relay_key_budget_left_usd", key="alice", period="day")
    assert abs(left - (5 - usage["cost_usd"])) < 1e-6, left


def test_status_in_a_fresh_shell_reports_the_running_relays_upstream(
    start_relay, admin: Admin, upstream: FakeUpstream, relay_env: dict[str, str], tmp_path: Path
) -> None:
    relay = start_relay()
    report = wait_for_record(relay_env, tmp_path, relay)
    (running,) = [r for r in report["relays"] if f"127.0.0.1:{relay.port}" in r["listen"]]
    assert running["pid"] == relay.pid and running["version"] and running["secret_fingerprint"]
    upstream_url = report["differences"]["upstream_url"]
    assert set(upstream_url["relays"].values()) == {upstream.url}
    assert upstream_url["shell"] == "https://api.anthropic.com"
    assert relay_env["RELAY_SECRET_KEY"] not in json.dumps(report)

    text = fresh_shell(relay_env, tmp_path, "status").stdout
    assert f"{upstream.url} (relay) — this shell: https://api.anthropic.com" in text, text
    assert f"127.0.0.1:{relay.port}" in text


def test_doctor_reports_no_fail_for_a_working_relay_when_the_shell_differs(
    start_relay, admin: Admin, upstream: FakeUpstream, relay_env: dict[str, str], tmp_path: Path
) -> None:
    relay = start_relay()
    key = admin.create_key("alice")
    admin.add_account("console", "sk-ant-api03-d")
    assert post(relay, key) == 200
    wait_for_record(relay_env, tmp_path, relay)

    result = fresh_shell(relay_env, tmp_path, "doctor", "--format", "json")
    report = json.loads(result.stdout)
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert "FAIL" not in levels.values(), report["checks"]
    assert result.returncode == 0
    assert levels[f"upstream {upstream.url}"] == "ok"  # the relay's upstream, not the shell's default
    assert levels["secret"] == "warn"  # this shell has none; the relay has the store's
    text = fresh_shell(relay_env, tmp_path, "doctor").stdout
    assert "0 FAIL" in text and "upstream_url" in text and "this shell: https://api.anthropic.com" in text


def test_a_refusal_of_an_over_limit_key_is_logged_and_counted_with_its_name(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay()
    key = admin.create_key("capped")
    admin.update_key("capped", lambda k: k.limits.windows.append(LimitWindow(seconds=3600, requests=1)))
    admin.add_account("console", "sk-ant-api03-r")
    assert post(relay, key) == 200
    assert post(relay, key) == 429
    assert post(relay, "wrong-key") == 401

    found = samples(scrape(relay))
    assert total(found, "relay_requests_total", key="capped", status="429") == 1
    assert total(found, "relay_requests_total", key="capped", status="200") == 1
    assert total(found, "relay_requests_total", key="", status="401") == 1
    assert relay.wait_for_output("status=429", timeout=10)
    assert relay.wait_for_output("status=401", timeout=10)  # a later line: it may reach the log in a later write
    lines = [line for line in relay.log().splitlines() if "relay.requests" in line and "status=429" in line]
    assert lines and all("key=capped" in line for line in lines), lines
    assert any("key=" not in line for line in relay.log().splitlines() if "status=401" in line)
