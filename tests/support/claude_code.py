"""The real Claude Code CLI as a test client, and a scripted Messages API for it to talk to.

`tests/clients/package.json` pins the CLI (`make test` runs `npm ci` there). `ClaudeCode` runs `claude -p`
with a throwaway HOME, config dir and working directory, pointed at a base URL the way a team member
configures it (ANTHROPIC_BASE_URL + ANTHROPIC_AUTH_TOKEN). `ClientTap` sits between the CLI and the relay
and keeps the raw bytes the CLI sent, so a test can compare them with what reached the upstream.
`ScriptedApi` is a handler for `FakeUpstream`: it answers like the real API (SSE shaped after
docs/claude-api §4 and the v2.1.332 capture), scripted for one Bash tool round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_start_event

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
PACKAGE = "@anthropic-ai/claude-code"
CLAUDE = CLIENTS / "node_modules" / ".bin" / "claude"


def pinned_version() -> str:
    return json.loads((CLIENTS / "package.json").read_text())["dependencies"][PACKAGE]


def install_problem() -> str | None:
    """Why the pinned CLI cannot run here, or None when `claude --version` is the pinned one."""
    hint = "run `make test` (or `make clients`: npm ci in tests/clients)"
    if not CLAUDE.exists():
        return f"Claude Code is not installed at {CLAUDE}; {hint}"
    try:
        out = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{CLAUDE} --version failed ({error}); {hint}"
    if not out.startswith(pinned_version() + " "):
        return f"{CLAUDE} is {out.strip()!r}, tests/clients/package.json pins {pinned_version()}; {hint}"
    return None


# --- the client ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        """The single JSON object of `--output-format json`."""
        assert self.returncode == 0, self.describe()
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(self.describe()) from None

    def describe(self) -> str:
        return (
            f"claude exited {self.returncode}\nargs: {self.args}\n"
            f"stdout: {self.stdout[-4000:]}\nstderr: {self.stderr[-4000:]}"
        )


class ClaudeCode:
    """`claude -p` as a team member runs it behind the relay, sealed off from the machine's own setup.

    The environment is built from nothing (no ANTHROPIC_API_KEY or other ANTHROPIC_* of the host leaks in);
    HOME, the config dir, XDG dirs and TMPDIR live under `home`, so no user config, onboarding state,
    credentials or keychain is read or written. `--allowedTools Bash` lets the Bash tool run without a
    prompt; it works as root, unlike --dangerously-skip-permissions (refused as root unless IS_SANDBOX=1).
    """

    def __init__(
        self,
        home: Path,
        cwd: Path,
        base_url: str | None,
        token: str,
        model: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """`base_url` None: Claude Code's own default (api.anthropic.com), e.g. behind HTTPS_PROXY in extra_env."""
        self.home, self.cwd, self.base_url, self.token, self.model = home, cwd, base_url, token, model
        self.extra_env = dict(extra_env or {})  # e.g. NODE_EXTRA_CA_CERTS for a relay serving HTTPS
        for path in (home, cwd, home / "tmp"):
            path.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        home = str(self.home)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "USER": os.environ.get("USER", "relay-test"),
            "LANG": "C.UTF-8",
            "TMPDIR": f"{home}/tmp",
            "CLAUDE_CONFIG_DIR": f"{home}/.claude",
            "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "XDG_DATA_HOME": f"{home}/.local/share",
            "XDG_STATE_HOME": f"{home}/.local/state",
            "ANTHROPIC_AUTH_TOKEN": self.token,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            # A failing relay shows up as a quick error result, not ten backed-off retries into the timeout.
            "CLAUDE_CODE_MAX_RETRIES": "2",
        }
        if self.base_url is not None:
            env["ANTHROPIC_BASE_URL"] = self.base_url
        shell = shutil.which("bash")
        if shell:
            env["SHELL"] = shell
        return env | self.extra_env

    def run(self, prompt: str, *extra: str, timeout: float = 60) -> Run:
        args = [
            str(CLAUDE),
            "-p",
            prompt,
            "--output-format",
            "json",
            "--model",
            self.model,
            "--allowedTools",
            "Bash",
            *extra,
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(
                args,
                env=self.env(),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as expired:  # subprocess.run has killed it
            out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
            err = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
            raise AssertionError(
                f"claude did not finish within {timeout} s\nargs: {args}\nstdout: {out}\nstderr: {err}"
            ) from None
        return Run(args, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


# --- a transparent tap between the client and the relay ------------------------------------------------------


@dataclass
class Sent:
    """One HTTP request as the client put it on the wire."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ClientTap:
    """A TCP pass-through on loopback that keeps every byte the client sent (nothing is parsed on the way)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._streams: list[bytearray] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> ClientTap:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the relay is gone: the client sees its connection close
                client.close()
                continue
            record = bytearray()
            with self._lock:
                self._streams.append(record)
            for source, sink, keep in ((client, upstream, record), (upstream, client, None)):
                thread = threading.Thread(target=self._pump, args=(source, sink, keep), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)

    def streams(self) -> list[bytes]:
        """Every byte the client sent, one entry per connection (for a proxy: its CONNECT, then TLS)."""
        with self._lock:
            return [bytes(s) for s in self._streams]

    def requests(self) -> list[Sent]:
        with self._lock:
            streams = [bytes(s) for s in self._streams]
        return [request for stream in streams for request in _parse_requests(stream)]


def _parse_requests(stream: bytes) -> Iterable[Sent]:
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        if not sep:
            return  # an unfinished request (the client hung up mid-way): nothing to compare
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            body_bytes = bytes(body)
        else:
            length = int(headers.get("content-length", "0"))
            body_bytes, rest = rest[:length], rest[length:]
        yield Sent(method, path, headers, body_bytes)
        stream = rest


# --- the scripted API ------------------------------------------------------------------------------------------

TOOL_COMMAND = "echo relay-tool-ok"
TOOL_MARKER = "relay-tool-ok"
FINAL_TEXT = "The marker command printed relay-tool-ok."
NOT_FOUND = b'{"type":"error","error":{"type":"not_found_error","message":"Not found"},"request_id":"req_fake"}'
RESUME_TEXT = "Earlier the marker command printed relay-tool-ok; nothing else ran."

# USD per million tokens of the one model the scenario uses (claude-api §9, Sonnet 4.5): input, 5 m cache
# write, 1 h cache write, cache read, output. Claude Code and genai-prices both list these.
SONNET_45 = (Decimal(3), Decimal("3.75"), Decimal(6), Decimal("0.30"), Decimal(15))


def usage(input_tokens: int, write_5m: int = 0, write_1h: int = 0, read: int = 0, output: int = 1) -> dict[str, Any]:
    """Anthropic usage as message_start carries it (output_tokens is the final count here)."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
        "output_tokens": output,
        "service_tier": "standard",
    }


def list_price(prices: tuple[Decimal, ...], used: dict[str, Any]) -> Decimal:
    """The list price of one response's usage, by hand: the third opinion next to relay and client."""
    inp, w5, w1, read, out = prices
    cache = used.get("cache_creation") or {}
    tokens = (
        used["input_tokens"] * inp
        + cache.get("ephemeral_5m_input_tokens", 0) * w5
        + cache.get("ephemeral_1h_input_tokens", 0) * w1
        + used.get("cache_read_input_tokens", 0) * read
        + used["output_tokens"] * out
    )
    return tokens / Decimal(1_000_000)


def _frame(name: str, data: dict[str, Any], pad: int = 0) -> bytes:
    text = json.dumps(data, separators=(",", ":"))
    if pad:  # the real API pads some data lines with spaces inside the JSON (claude-api §4)
        text = text[:-1] + " " * pad + "}"
    return f"event: {name}\ndata: {text}\n\n".encode()


def message_stream(
    model: str, message_id: str, blocks: list[dict[str, Any]], stop_reason: str, used: dict[str, Any]
) -> list[bytes]:
    """A Messages SSE stream: message_start (input and cache usage, output 1), each block as start, deltas
    and stop, message_delta with the cumulative usage, message_stop. A block is {"text": str} or
    {"tool_use": {"id", "name", "input"}}; tool input arrives as input_json_delta pieces."""
    frames = [_frame("message_start", message_start_event(model, used, message_id)), _frame("ping", {"type": "ping"})]
    for index, block in enumerate(blocks):
        if "text" in block:
            frames.append(
                _frame(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
            )
            words = block["text"].split(" ")
            for n, word in enumerate(words):
                piece = word if n == len(words) - 1 else word + " "
                delta = {"type": "text_delta", "text": piece}
                frames.append(
                    _frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
        else:
            tool = block["tool_use"]
            start = {"type": "tool_use", "id": tool["id"], "name": tool["name"], "input": {}}
            frames.append(
                _frame("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            )
            partial = json.dumps(tool["input"])
            for cut in range(0, len(partial), 12):
                delta = {"type": "input_json_delta", "partial_json": partial[cut : cut + 12]}
                frames.append(
                    _frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
        frames.append(_frame("content_block_stop", {"type": "content_block_stop", "index": index}))
    final_usage = {k: used[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    final_usage["output_tokens"] = used["output_tokens"]
    frames += [
        _frame(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": final_usage,
            },
        ),
        _frame("message_stop", {"type": "message_stop"}, pad=10),
    ]
    return frames


def unified_headers() -> dict[str, str]:
    """Subscription rate-limit headers (claude-api §6) of an account far from its limits."""
    now = int(time.time())
    return {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-reset": str(now + 3 * 3600),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-reset": str(now + 3 * 3600),
        "anthropic-ratelimit-unified-5h-utilization": "0.12",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": str(now + 4 * 86400),
        "anthropic-ratelimit-unified-7d-utilization": "0.31",
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    }


@dataclass
class Answered:
    """One /v1/messages request the scripted API answered: what it was taken for and the usage it reported."""

    kind: str  # "tool_call", "final", "resume", "quota", "background"
    seen: Seen
    model: str
    usage: dict[str, Any]


@dataclass
class ScriptedApi:
    """`FakeUpstream.handler` for the tool round trip.

    Turn 1 (a prompt with the Bash tool on offer) is answered with a streamed Bash call of TOOL_COMMAND;
    the request carrying its tool_result gets FINAL_TEXT (or, if the result lacks the marker, a text that
    says so, which the test then sees); a later user prompt (the resumed turn) gets RESUME_TEXT. Claude
    Code's side requests, if any, are answered too: the quota probe (`max_tokens: 1`, not streamed) and
    tool-less background calls (titles and the like). Every answer reports distinct usage with cache
    reads and 5 m / 1 h writes, so a pricing difference between relay and client cannot hide.
    """

    answered: list[Answered] = field(default_factory=list)
    tool_id: str = "toolu_01RelayE2eBashCall0001"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    USAGE = {
        "tool_call": usage(4, write_1h=5120, write_5m=0, read=0, output=61),
        "final": usage(9, write_5m=180, write_1h=0, read=5120, output=17),
        "resume": usage(6, write_5m=96, write_1h=256, read=5300, output=23),
        "quota": usage(8, output=1),
        "background": usage(120, output=9),
    }

    def __call__(self, seen: Seen) -> Reply:
        path = seen.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            return Reply(body=b'{"input_tokens": 321}')
        if path != "/v1/messages":
            return Reply(status=404, body=NOT_FOUND)
        body = seen.json()
        model = body.get("model", "")
        kind, blocks, stop = self._script(body)
        used = self.USAGE[kind]
        with self._lock:
            self.answered.append(Answered(kind, seen, model, used))
            message_id = f"msg_01RelayE2e{len(self.answered):04d}"
        headers = {**unified_headers(), "request-id": f"req_01RelayE2e{len(self.answered):04d}"}
        if not body.get("stream"):
            content = [{"type": "text", "text": b["text"]} for b in blocks]
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": used,
            }
            return Reply(headers=headers, body=json.dumps(message).encode())
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        return Reply(headers=headers, chunks=message_stream(model, message_id, blocks, stop, used))

    def _script(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
        if body.get("max_tokens") == 1 and not body.get("stream"):
            return "quota", [{"text": "ok"}], "max_tokens"
        tools = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        if "Bash" not in tools:
            return "background", [{"text": "Relay tool check"}], "end_turn"
        last = (body.get("messages") or [{}])[-1]
        content = last.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        results = [p for p in parts if isinstance(p, dict) and p.get("type") == "tool_result"]
        if results:
            ours = [p for p in results if p.get("tool_use_id") == self.tool_id]
            if ours and TOOL_MARKER in tool_result_text(ours[0]):
                return "final", [{"text": FINAL_TEXT}], "end_turn"
            return "final", [{"text": f"tool_result without the marker: {json.dumps(results)[:500]}"}], "end_turn"
        if any(p.get("type") == "tool_result" for m in body.get("messages", []) for p in _parts(m)):
            return "resume", [{"text": RESUME_TEXT}], "end_turn"  # a new prompt after the round trip
        tool = {
            "id": self.tool_id,
            "name": "Bash",
            "input": {"command": TOOL_COMMAND, "description": "Print the marker"},
        }
        return "tool_call", [{"text": "Running the marker command."}, {"tool_use": tool}], "tool_use"

    def kinds(self) -> list[str]:
        with self._lock:
            return [a.kind for a in self.answered]


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def tool_result_text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
