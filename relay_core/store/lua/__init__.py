"""The store's Lua scripts, one file each, shipped with the package (`relay_core/store/lua/*.lua`).

A script gets every key it touches in KEYS, so it runs unchanged on a single server and on a Redis
Cluster slot; only admit.lua derives names, from prefixes in ARGV (it says why). Shared preludes
(`now_ms`: the server clock) are separate files joined in front of the script that needs them.
"""

from __future__ import annotations

import functools
from importlib.resources import files


@functools.cache
def lua(*names: str) -> str:
    """The text of the named files (`now_ms`, `lock_acquire`, ...), joined in order."""
    return "\n".join(files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)
