"""LeanMaster: an event reaches exactly the chain entries mitmproxy's own master would call, in the same
order and with the same isolation, while entries without the hook are skipped (cli/lean_master.py)."""

from __future__ import annotations

import logging

import pytest
from mitmproxy import exceptions
from mitmproxy import options
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import tflow

from cli.lean_master import LeanMaster


class Recording:
    """A chain entry that notes which of its hooks ran, under its own name."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen


class RequestOnly(Recording):
    def request(self, flow: object) -> None:
        self.seen.append(f"{self.name}.request")


class AsyncResponse(Recording):
    async def response(self, flow: object) -> None:
        self.seen.append(f"{self.name}.response")


class Updating(Recording):
    def request(self, flow: object) -> None:
        self.seen.append(f"{self.name}.request")

    def update(self, flows: list[object]) -> None:
        self.seen.append(f"{self.name}.update")


class Raising(Recording):
    def request(self, flow: object) -> None:
        self.seen.append(f"{self.name}.request")
        raise ValueError("boom")


class Halting(Recording):
    def response(self, flow: object) -> None:
        self.seen.append(f"{self.name}.response")
        raise exceptions.AddonHalt()


class Parent(Recording):
    """An entry with children, which may change after the index was built."""

    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__(name, seen)
        self.addons: list[object] = []


async def run_flow(master: Master) -> None:
    flow = tflow.tflow(resp=True)
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    await master.addons.handle_lifecycle(HttpResponseHook(flow))


def chain(master_type: type[Master], seen: list[str]) -> Master:
    master = master_type(options.Options())
    master.addons.add(
        RequestOnly("a", seen),
        AsyncResponse("b", seen),
        Raising("c", seen),
        Updating("d", seen),
        Halting("e", seen),
        AsyncResponse("f", seen),  # after the halt: mitmproxy's master never calls it either
    )
    return master


async def test_the_same_hooks_run_in_the_same_order_as_under_mitmproxys_master(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected: list[str] = []
    await run_flow(chain(Master, expected))
    seen: list[str] = []
    with caplog.at_level(logging.ERROR):
        await run_flow(chain(LeanMaster, seen))
    assert (
        seen
        == expected
        == [
            "a.request",
            "c.request",  # raised: logged, and the next entry still runs
            "d.request",
            "d.update",
            "b.response",
            "e.response",
            "d.update",  # AddonHalt stops the event, not the update that follows it
        ]
    )
    assert "boom" in caplog.text


async def test_entries_added_or_removed_later_are_seen() -> None:
    seen: list[str] = []
    master = LeanMaster(options.Options())
    first = RequestOnly("first", seen)
    master.addons.add(first)
    await run_flow(master)
    master.addons.add(RequestOnly("later", seen), Updating("updating", seen))
    master.addons.remove(first)
    await run_flow(master)
    assert seen == ["first.request", "later.request", "updating.request", "updating.update", "updating.update"]


async def test_an_entrys_children_are_found_when_they_change() -> None:
    seen: list[str] = []
    master = LeanMaster(options.Options())
    parent = Parent("parent", seen)
    master.addons.add(parent)
    await run_flow(master)
    parent.addons.append(RequestOnly("child", seen))  # as a script reloaded with a new hook would
    await run_flow(master)
    assert seen == ["child.request"]


async def test_no_update_event_is_made_when_no_entry_has_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    master = LeanMaster(options.Options())
    master.addons.add(RequestOnly("a", seen), AsyncResponse("b", seen))
    made: list[object] = []
    monkeypatch.setattr("mitmproxy.hooks.UpdateHook.__init__", lambda self, flows: made.append(flows))
    await run_flow(master)
    assert seen == ["a.request", "b.response"] and made == []
