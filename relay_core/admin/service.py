"""The admin service: every operation on keys, accounts and alerts that the CLI and the web page offer.

It works on one Runtime (its store and keyring), returns records and raises AdminError subclasses
(or the store's NameTakenError and StoreError); it prints nothing and knows no click.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from relay_core.admin.accounts import AccountAdmin
from relay_core.admin.alerts import AlertAdmin
from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotFoundError
from relay_core.admin.keys import KeyAdmin
from relay_core.admin.signin import SignInAdmin
from relay_core.admin.web_tokens import WebTokenAdmin
from relay_core.reports import usage_row
from relay_core.reports import usage_rows
from relay_core.runtime import Runtime

DEFAULT_USAGE_DAYS = 30


class AdminService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = KeyAdmin(runtime)
        self.accounts = AccountAdmin(runtime)
        self.signin = SignInAdmin(runtime, self.accounts)
        self.alerts = AlertAdmin(runtime)
        self.web_tokens = WebTokenAdmin(runtime)

    async def usage(
        self,
        by: str,
        since: dt.date | None = None,
        until: dt.date | None = None,
        key_name: str | None = None,
        every_key: bool = False,
    ) -> list[dict[str, Any]]:
        """Usage grouped `by` key, account, model, day, hour or month; by default the last 30 days to today.
        every_key: by key, a row of zeros for each key that was not used (people look for the idle ones)."""
        store = self.runtime.store
        last = until or dt.datetime.now(store.zone).date()
        first = since or last - dt.timedelta(days=DEFAULT_USAGE_DAYS)
        if first > last:
            raise InvalidValueError("--since is after --until")
        keys = {k.id: k.name for k in await store.list_keys()}
        accounts = {a.id: a.name for a in await store.list_accounts()}
        key_id = None
        if key_name is not None:
            found = await store.find_key(key_name)
            if found is None:
                raise NotFoundError(f"no team key named {key_name!r}")
            key_id = found.id
        rows = usage_rows(await store.usage_cells(first, last), by, keys, accounts, key_id)
        if every_key and by == "key":
            used = {row["key"] for row in rows}
            idle = [name for kid, name in keys.items() if name not in used and key_id in (None, kid)]
            rows += [usage_row("key", name, {}) for name in sorted(idle)]
        return rows
