"""Soak: minutes of mixed traffic with hang-ups and upstream failures, then nothing is held and every
token the upstream sent is counted.

One real `relay serve` process, the fake upstream, two subscription accounts (rate lock on) and two
API-key accounts, three team keys (one with a concurrency limit, one with a budget, so both the
lease and the charge-before-the-answer-ends paths run). RELAY_SOAK_CONCURRENCY client threads
(default 16) drive, for RELAY_SOAK_SECONDS (default 90; set e.g. RELAY_SOAK_SECONDS=1800 for a long
local soak), a random mix through the official `anthropic` SDK and raw sockets:

- plain and streamed answers, human turns and tool-result turns;
- clients that hang up mid-stream after a few events (the upstream stops after exactly those events
  and waits for the relay to close its connection, so what the relay saw is known to the byte);
- clients that hang up before the response headers (the upstream notices and sends nothing);
- upstream 500s, 529s, streams the upstream cuts, and streams that end in an SSE error event.

Afterwards, it asserts:
- no rate lock, lock waiter or concurrency lease is left in Valkey (their TTLs are set far beyond
  the run, so a leaked one cannot hide by expiring);
- recorded usage per key and per account equals, token for token, what the upstream's ledger says
  it sent (input and cache counts from `message_start`, output from `message_delta`; a stream cut
  before `message_delta` after some text gets the documented estimate of 4 characters a token);
- every client hang-up closed the upstream connection (no upstream hold ran out its timeout);
- the relay is alive, answers a normal request, and its RSS grew by less than a generous bound.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis

from relay_core.metering import estimated_input_tokens
from relay_core.pricing import price_usd
from relay_core.protocols.anthropic.usage import merge_usage
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import Sent
from tests.support.fake_upstream import message_json
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.slow  # runs in CI in a step of its own (make test-slow)

SOAK_SECONDS = float(os.environ.get("RELAY_SOAK_SECONDS", "90"))
CONCURRENCY = int(os.environ.get("RELAY_SOAK_CONCURRENCY", "16"))
RSS_GROWTH_BOUND_MB = 200  # a sanity bound against unbounded growth, not a performance figure

MODELS = ["claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-opus-4-8"]
HUMAN = [{"role": "user", "content": "please refactor this"}]
TOOL_RESULT = [
    {"role": "user", "content": "go"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
]
FRAMES = len(sse_frames("m", {}))  # events in one full stream
PING_INDEX = [b"event: ping" in frame for frame in sse_frames("m", {})].index(True)
EARLY_HANGUP_HEADER_DELAY = 1.0
TOKEN_NAMES = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
)
CHARS_PER_TOKEN = 4  # the relay's documented estimate for output cut before message_delta


# --- the upstream side: an answer per mode, and what its ledger says was reported ------------------


def upstream_handler(seed: int) -> Callable[[Seen], Reply]:
    rng = random.Random(seed)
    lock = threading.Lock()

    def reply(seen: Seen) -> Reply:
        body = seen.json()
        _, _, mode, arg = body["metadata"]["user_id"].split("|")
        with lock:
            w5, w1 = rng.choice([0, rng.randint(1, 3000)]), rng.choice([0, rng.randint(1, 3000)])
            usage = {
                "input_tokens": rng.randint(1, 5000),
                "output_tokens": rng.randint(2, 2000),
                "cache_read_input_tokens": rng.choice([0, rng.randint(1, 50000)]),
                "cache_creation_input_tokens": w5 + w1,
                "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
            }
            delay = rng.choice([0.0, 0.002, 0.01])
        model = body["model"]
        sse = {"content-type": "text/event-stream"}
        if mode == "500":
            return Reply(status=500, body=b'{"type":"error","error":{"type":"api_error","message":"boom"}}')
        if mode == "529":
            return Reply(status=529, body=b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
        if mode == "slowhead":  # the client hangs up before this delay ends
            return Reply(body=message_json(model, usage), header_delay=EARLY_HANGUP_HEADER_DELAY)
        if not body.get("stream"):
            return Reply(body=message_json(model, usage))
        frames = sse_frames(model, usage)
        if mode == "hold":
            return Reply(headers=sse, chunks=frames, chunk_delay=delay, hold_after=int(arg))
        if mode == "die":
            return Reply(headers=sse, chunks=frames, chunk_delay=delay, abort_after=int(arg))
        if mode == "errevent":
            error = (
                b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
            )
            return Reply(headers=sse, chunks=[*frames[: int(arg)], error], chunk_delay=delay)
        return Reply(headers=sse, chunks=frames, chunk_delay=delay)

    return reply


def reported_usage(sent: Sent) -> tuple[TokenUsage, str]:
    """What the upstream's answer reported, as the relay's documented rules count it; and the model."""
    usage = TokenUsage()
    model = sent.seen.json()["model"]
    if sent.status != 200:
        return usage, model
    if not sent.chunks:
        payload = json.loads(sent.body) if sent.body else {}
        merge_usage(usage, payload.get("usage"))
        return usage, model
    saw_start, saw_delta, text_chars = False, False, 0
    for chunk in sent.chunks:
        event = json.loads(chunk.split(b"data: ", 1)[1])
        if event["type"] == "message_start":
            saw_start = True
            start = event["message"]["usage"]
            usage.input_tokens = start["input_tokens"]
            usage.output_tokens = start["output_tokens"]
            usage.cache_read_input_tokens = start["cache_read_input_tokens"]
            usage.cache_write_5m_tokens = start["cache_creation"]["ephemeral_5m_input_tokens"]
            usage.cache_write_1h_tokens = start["cache_creation"]["ephemeral_1h_input_tokens"]
        elif event["type"] == "message_delta":
            saw_delta = True
            usage.output_tokens = event["usage"]["output_tokens"]
        elif event["type"] == "content_block_delta":
            text_chars += len(event["delta"]["text"])
    if saw_start and not saw_delta and text_chars:
        usage.output_tokens = max(usage.output_tokens, text_chars // CHARS_PER_TOKEN)
    return usage, model


def counted_usage(seen: Seen, sent: Sent | None) -> tuple[TokenUsage, str]:
    """What the relay counts for a request the upstream received: what the answer reported, or, when a
    successful answer showed no usage (the client hung up before the headers, or the stream broke before
    `message_start` without an `error` event), the documented estimate of its input."""
    usage, model = reported_usage(sent) if sent is not None else (TokenUsage(), seen.json()["model"])
    failed = sent is not None and (sent.status != 200 or any(b"event: error" in chunk for chunk in sent.chunks))
    if usage.is_empty() and not failed:
        usage.input_tokens = estimated_input_tokens(len(seen.body))
    return usage, model


# --- the client side ---------------------------------------------------------------------------


def raw_exchange(port: int, key: str, body: dict[str, Any], stop_after_events: int | None, hang_up_after: float | None):
    """A raw HTTP/1.1 client. It may hang up after `stop_after_events` SSE events, or `hang_up_after`
    seconds without reading anything; returns the status it saw (0: none)."""
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/messages?beta=true HTTP/1.1\r\nHost: relay\r\nx-api-key: {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\nconnection: close\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        if random.random() < 0.5:  # half the hang-ups are resets rather than orderly closes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(head.encode() + raw)
        if hang_up_after is not None:
            time.sleep(hang_up_after)
            return 0
        received = b""
        while True:
            _, _, answer = received.partition(b"\r\n\r\n")
            if stop_after_events is not None and answer.count(b"\n\n") >= stop_after_events:
                break
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0
    finally:
        sock.close()


class Driver:
    def __init__(self, relay: RelayProcess, keys: dict[str, str], seed: int) -> None:
        self.relay = relay
        self.keys = keys
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.sdk = {
            (name, auth): anthropic.Anthropic(
                base_url=relay.url,
                max_retries=0,
                timeout=30,
                **({"auth_token": secret} if auth else {"api_key": secret}),  # type: ignore[arg-type]
            )
            for name, secret in keys.items()
            for auth in (True, False)
        }

    def pick(self) -> dict[str, Any]:
        with self.lock:
            rng = self.rng
            action = rng.choices(
                ["sdk_create", "sdk_stream", "sdk_hangup", "raw_json", "raw_stream", "raw_hangup", "raw_early"],
                weights=[3, 3, 2, 2, 2, 2, 1],
            )[0]
            mode, arg = "ok", 0
            if action in ("sdk_create", "raw_json"):
                mode = rng.choices(["ok", "500", "529"], weights=[8, 1, 1])[0]
            elif action in ("sdk_stream", "raw_stream"):
                mode = rng.choices(["ok", "die", "errevent"], weights=[6, 1, 1])[0]
                arg = rng.randint(0, FRAMES - 1)
            elif action in ("sdk_hangup", "raw_hangup"):
                mode, arg = "hold", rng.randint(1, FRAMES - 1)
            else:
                mode = "slowhead"
            return {
                "action": action,
                "mode": mode,
                "arg": arg,
                "key": rng.choices(list(self.keys), weights=[3, 1, 2])[0],  # bob's refusals are quick
                "auth": rng.random() < 0.5,
                "model": rng.choice(MODELS),
                "messages": HUMAN if rng.random() < 0.6 else TOOL_RESULT,
                "hang_up_after": rng.uniform(0.05, 0.3),
            }

    def one(self, job: dict[str, Any]) -> str:
        action, mode = job["action"], job["mode"]
        user_id = f"soak|{job['key']}|{mode}|{job['arg']}"
        kwargs: dict[str, Any] = {
            "model": job["model"],
            "max_tokens": 64,
            "messages": job["messages"],
            "metadata": {"user_id": user_id},
        }
        sdk = self.sdk[(job["key"], job["auth"])]
        try:
            if action == "sdk_create":
                sdk.messages.create(**kwargs)
                return "200"
            if action == "sdk_stream":
                with sdk.messages.stream(**kwargs) as stream:
                    stream.until_done()
                return "200"
            if action == "sdk_hangup":
                visible = job["arg"] - (job["arg"] > PING_INDEX)  # the SDK does not yield the ping event
                with sdk.messages.create(**kwargs, stream=True) as events:
                    for seen, _ in enumerate(events, 1):
                        if seen >= visible:
                            break
                return "hangup"
        except anthropic.APIStatusError as exc:
            return str(exc.status_code)
        except anthropic.APIError as exc:  # a stream that ended without its end (upstream cut)
            return type(exc).__name__
        body = {**kwargs, "stream": action != "raw_json"}
        if action == "raw_early":
            body["stream"] = False
            return f"early-{raw_exchange(self.relay.port, self.keys[job['key']], body, None, job['hang_up_after'])}"
        stop = job["arg"] if action == "raw_hangup" else None
        return str(raw_exchange(self.relay.port, self.keys[job["key"]], body, stop, None))

    def run(self, seconds: float, on_tick: Callable[[float], None]) -> None:
        deadline = time.monotonic() + seconds

        def worker(_: int) -> None:
            while time.monotonic() < deadline:
                job = self.pick()
                try:
                    outcome = self.one(job)
                except Exception as exc:  # an unexpected client-side failure is a finding, not a crash
                    outcome = "unexpected"
                    with self.lock:
                        self.unexpected.append(f"{job}: {exc!r}")
                with self.lock:
                    self.outcomes[f"{job['action']}:{outcome}"] += 1

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(worker, n) for n in range(CONCURRENCY)]
            while time.monotonic() < deadline:
                time.sleep(1)
                on_tick(deadline - time.monotonic())
            for future in futures:
                future.result()


# --- the relay's state -----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def held_state(store: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every rate lock, lock waiter and concurrency lease present in Valkey."""
    tag = "{" + prefix + "}"
    state: dict[str, Any] = {}
    for pattern in (f"{tag}:queue:*:lock", f"{tag}:queue:*:waiters", f"{tag}:leases:*", f"{tag}:refresh:*"):
        for name in store.scan_iter(match=pattern):
            kind = store.type(name)
            if kind == b"zset":
                members = store.zrange(name, 0, -1)
                if members:
                    state[name.decode()] = members
            elif kind != b"none":
                state[name.decode()] = store.get(name)
    return state


def test_soak_mixed_traffic_leaves_nothing_held_and_counts_every_token(
    start_relay, admin: Admin, upstream: FakeUpstream, relay_env: dict[str, str]
) -> None:
    far = str(int((SOAK_SECONDS + 600) * 1000))  # no leaked lock, waiter or lease can expire during the run
    relay = start_relay(
        "serve",
        USER_MESSAGE_QUEUE_DELAY_MS="20",
        USER_MESSAGE_QUEUE_TIMEOUT_MS="5000",
        USER_MESSAGE_QUEUE_LOCK_TTL_MS=far,
        RELAY_LEASE_TTL_MS=far,
        RELAY_FAILURE_COOLDOWN_S="1",
        RELAY_OVERLOAD_COOLDOWN_S="0",  # upstream 529s still fail over, without resting every account
    )
    keys = {name: admin.create_key(name) for name in ("alice", "bob", "carol")}
    admin.set_key_concurrency("bob", 3)
    admin.update_key("carol", lambda k: k.limits.budgets_nanousd.update(day=int(1e6 * 1e9)))
    accounts = [
        admin.add_account("max-1", "sk-ant-oat01-soak-1", kind="oauth"),
        admin.add_account("max-2", "sk-ant-oat01-soak-2", kind="oauth"),
        admin.add_account("console-1", "sk-ant-api03-soak-1"),
        admin.add_account("console-2", "sk-ant-api03-soak-2"),
    ]
    credential_account = {
        "Bearer sk-ant-oat01-soak-1": "max-1",
        "Bearer sk-ant-oat01-soak-2": "max-2",
        "sk-ant-api03-soak-1": "console-1",
        "sk-ant-api03-soak-2": "console-2",
    }
    upstream.handler = upstream_handler(seed=7)
    driver = Driver(relay, keys, seed=11)

    rss: dict[str, float] = {"start": rss_mb(relay.pid)}

    def tick(remaining: float) -> None:
        assert relay.alive(), relay.log()[-3000:]
        if "warm" not in rss and remaining < SOAK_SECONDS * 0.8:
            rss["warm"] = rss_mb(relay.pid)

    driver.run(SOAK_SECONDS, tick)
    rss.setdefault("warm", rss["start"])

    # --- nothing is held once the relay settled -----------------------------------------------
    store = redis.Redis.from_url(relay_env["RELAY_REDIS_URL"])
    prefix = relay_env["RELAY_KEY_PREFIX"]
    deadline = time.monotonic() + 10
    while (held := held_state(store, prefix)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held == {}, held
    for name in keys:
        assert admin.lock_and_lease_state(name, [a.id for a in accounts]) == {
            "leases": 0,
            "locks": [None] * 4,
            "waiting": [0] * 4,
        }

    # --- every token the upstream sent is counted, per key and per account --------------------
    ledger = list(upstream.sent)
    held_out = [
        (s.seen.json()["metadata"]["user_id"], s.seen.headers.get("user-agent"), len(s.chunks))
        for s in ledger
        if s.held_out
    ]
    assert not held_out, f"client hang-ups that did not close the upstream connection: {held_out}"
    expected = {"key": defaultdict(TokenUsage), "account": defaultdict(TokenUsage)}
    expected_cost: dict[str, Decimal] = defaultdict(Decimal)
    answers = {id(sent.seen): sent for sent in ledger}
    for seen in upstream.requests:
        usage, model = counted_usage(seen, answers.get(id(seen)))
        key_name = seen.json()["metadata"]["user_id"].split("|")[1]
        credential = seen.headers.get("authorization") or seen.headers["x-api-key"]
        for group, name in (("key", key_name), ("account", credential_account[credential])):
            total = expected[group][name]
            for field in TOKEN_NAMES:
                setattr(total, field, getattr(total, field) + getattr(usage, field))
        expected_cost[key_name] += price_usd(model, usage, {}) if not usage.is_empty() else Decimal(0)

    def recorded(by: str) -> dict[str, dict[str, int]]:
        return {row[by]: {f: row[f] for f in (*TOKEN_NAMES, "requests")} for row in admin.usage(by)}

    def as_expected(by: str) -> dict[str, dict[str, int]]:
        return {
            name: {f: getattr(total, f) for f in TOKEN_NAMES}
            for name, total in expected[by].items()
            if any(getattr(total, f) for f in TOKEN_NAMES)
        }

    def tokens_only(rows: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        return {n: {f: r[f] for f in TOKEN_NAMES} for n, r in rows.items() if any(r[f] for f in TOKEN_NAMES)}

    deadline = time.monotonic() + 15  # usage is written in the background after each answer
    while tokens_only(recorded("key")) != as_expected("key") and time.monotonic() < deadline:
        time.sleep(0.2)
    by_key, by_account = recorded("key"), recorded("account")
    summary = (
        f"{sum(driver.outcomes.values())} client requests, {len(upstream.requests)} reached the upstream, "
        f"{len(ledger)} answers sent; outcomes {dict(sorted(driver.outcomes.items()))}; "
        f"upstream statuses {Counter(s.status for s in ledger)}; early hang-ups that reached the upstream "
        f"{sum('|slowhead|' in s.body.decode() for s in upstream.requests)}, answered "
        f"{sum('|slowhead|' in s.seen.body.decode() for s in ledger)}; RSS MB {rss}"
    )
    print(summary)
    assert tokens_only(by_key) == as_expected("key"), summary
    assert tokens_only(by_account) == as_expected("account"), summary
    cost_by_key = {row["key"]: Decimal(str(row["cost_usd"])) for row in admin.usage("key")}
    for name, cost in expected_cost.items():
        assert abs(cost_by_key.get(name, Decimal(0)) - cost) < Decimal("0.00001"), (name, cost_by_key, cost)
    # every request that reached an account is counted for it (some routed ones never got that far)
    reached = Counter(
        credential_account[s.headers.get("authorization") or s.headers["x-api-key"]] for s in upstream.requests
    )
    for name, count in reached.items():
        assert by_account[name]["requests"] >= count, (name, by_account, reached)

    # --- the mix really happened --------------------------------------------------------------
    assert driver.unexpected == [], driver.unexpected[:10]
    outcomes = driver.outcomes
    for action in ("sdk_create", "sdk_stream", "raw_json", "raw_stream"):
        assert outcomes[f"{action}:200"] > 0, summary
    assert outcomes["sdk_hangup:hangup"] > 0 and any(k.startswith("raw_early") for k in outcomes), summary
    statuses = Counter(s.status for s in ledger)
    assert statuses[500] and statuses[529], summary
    assert any(not s.complete and s.status == 200 and s.chunks for s in ledger), "no stream was cut"
    assert any(k.endswith(":429") for k in outcomes), "the concurrency limit never refused anyone"

    # --- the relay is alive, serves, and did not grow without bound ----------------------------
    assert relay.alive()
    upstream.handler = None
    sdk = anthropic.Anthropic(base_url=relay.url, api_key=keys["alice"], max_retries=0)
    answer = sdk.messages.create(model=MODELS[0], max_tokens=5, messages=HUMAN)
    assert answer.content[0].text  # type: ignore[union-attr]
    rss["end"] = rss_mb(relay.pid)
    print(f"relay RSS MB: {rss}")
    assert rss["end"] - rss["warm"] < RSS_GROWTH_BOUND_MB, rss
