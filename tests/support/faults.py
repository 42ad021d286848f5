"""mitmproxy script for fault-injection tests: replaces the object named by RELAY_TEST_FAULT with one that raises.

RELAY_TEST_FAULT="module:attribute.path", e.g. "addons.router:Router.request" or "addons.router:choose_account".
"""

from __future__ import annotations

import importlib
import os
from typing import Any


class InjectedFault(RuntimeError):
    pass


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise InjectedFault("injected fault")


def _inject(spec: str) -> None:
    module_name, _, path = spec.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    getattr(owner, name)  # the target must exist, or the test is testing nothing
    setattr(owner, name, _boom)


_inject(os.environ["RELAY_TEST_FAULT"])
