"""RelayChain: the relay's addons as one mitmproxy chain entry, each hook still isolated; and
`relay serve` runs under `python -O` unless told otherwise."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.relay_chain import RelayChain
from cli.serve import run_optimized

ROOT = Path(__file__).resolve().parent.parent


class Calls:
    def __init__(self) -> None:
        self.seen: list[str] = []


class Raising:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def request(self, flow) -> None:  # type: ignore[no-untyped-def]
        self.calls.seen.append("raising.request")
        raise ValueError("boom")

    def response(self, flow) -> None:  # type: ignore[no-untyped-def]
        self.calls.seen.append("raising.response")
        raise ValueError("boom")


class Counting:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("counting_level", int, 1, "a test option")

    def configure(self, updated: set[str]) -> None:
        self.calls.seen.append("configure")
        if ctx.options.counting_level < 0:
            raise exceptions.OptionsError("counting_level must not be negative")

    def request(self, flow) -> None:  # type: ignore[no-untyped-def]
        self.calls.seen.append("counting.request")

    async def response(self, flow) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        self.calls.seen.append("counting.response")


def test_a_raising_hook_is_logged_and_the_next_addons_still_run(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    chain = RelayChain([Raising(calls), Counting(calls)])
    with taddons.context(chain) as tctx, caplog.at_level(logging.ERROR):
        flow = tflow.tflow(resp=True)
        asyncio.run(tctx.master.addons.handle_lifecycle(HttpRequestHook(flow)))
        asyncio.run(tctx.master.addons.handle_lifecycle(HttpResponseHook(flow)))
    assert calls.seen[-4:] == ["raising.request", "counting.request", "raising.response", "counting.response"]
    failures = [record for record in caplog.records if record.name == "addons.relay_chain"]
    assert [record.getMessage() for record in failures] == ["Raising.request failed", "Raising.response failed"]
    assert all(record.exc_info and record.exc_info[0] is ValueError for record in failures)


def test_it_is_one_chain_entry_whose_addons_get_options_and_configuration_errors() -> None:
    calls = Calls()
    counting = Counting(calls)
    chain = RelayChain([Raising(calls), counting])
    with taddons.context(chain) as tctx:
        assert chain in tctx.master.addons.chain
        assert counting not in tctx.master.addons.chain  # not a child either: its hooks run once, through the chain
        assert not hasattr(chain, "addons")
        assert not inspect.iscoroutinefunction(chain.load)  # mitmproxy calls load and configure synchronously
        assert inspect.iscoroutinefunction(chain.response)  # one of its addons' hooks is a coroutine
        tctx.configure(chain, counting_level=3)
        assert tctx.options.counting_level == 3
        with pytest.raises(exceptions.OptionsError, match="must not be negative"):
            tctx.configure(chain, counting_level=-1)
    assert "configure" in calls.seen
    assert not hasattr(chain, "update"), "no addon has the hook, so the chain offers none"


def test_a_hook_replaced_after_loading_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls()
    chain = RelayChain([Counting(calls)])
    monkeypatch.setattr(Counting, "request", lambda self, flow: calls.seen.append("replaced.request"))
    with taddons.context(chain) as tctx:
        asyncio.run(tctx.master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow())))
    assert calls.seen[-1] == "replaced.request"


def test_every_hook_is_known_even_when_the_chain_is_imported_first() -> None:
    """Hook names register as mitmproxy's modules load; the chain must not depend on import order."""
    probe = (
        "from addons.relay_chain import RelayChain\n"
        "class Every:\n"
        "    def requestheaders(self, flow): pass\n"
        "    def client_connected(self, client): pass\n"
        "    def running(self): pass\n"
        "chain = RelayChain([Every()])\n"
        "print(all(callable(getattr(chain, n, None)) for n in ('requestheaders', 'client_connected', 'running')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "True"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if entry)


def test_serve_runs_optimized_unless_pythonoptimize_is_set(start_relay) -> None:
    optimized = start_relay()
    assert environ_of(optimized.pid)["PYTHONOPTIMIZE"] == "1"  # the same pid, now under -O
    assert Path(f"/proc/{optimized.pid}/comm").read_text().strip() == "relay"  # still `relay` to ps and pkill
    opted_out = start_relay(PYTHONOPTIMIZE="0")
    assert environ_of(opted_out.pid)["PYTHONOPTIMIZE"] == "0"


def test_serve_called_in_process_never_replaces_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    replaced: list[object] = []
    monkeypatch.delenv("PYTHONOPTIMIZE", raising=False)
    monkeypatch.setattr(os, "execve", lambda *args: replaced.append(args))
    run_optimized()  # this process is pytest, not the relay CLI
    assert replaced == []
    monkeypatch.setattr(sys, "argv", [str(ROOT / "cli" / "main.py"), "serve"])
    run_optimized()
    assert replaced and replaced[0][1][:2] == [sys.executable, "-O"]
    assert replaced[0][2]["PYTHONOPTIMIZE"] == "1"
