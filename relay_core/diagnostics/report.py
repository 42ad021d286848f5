"""The whole report of `relay status` (reads only) and `relay doctor` (also the network)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

from relay_core.account_urls import opened
from relay_core.crypto import Keyring
from relay_core.diagnostics.account_checks import account_check
from relay_core.diagnostics.account_checks import account_row
from relay_core.diagnostics.account_checks import accounts_check
from relay_core.diagnostics.account_checks import keys_check
from relay_core.diagnostics.account_checks import prices_check
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.diagnostics.network_checks import Target
from relay_core.diagnostics.network_checks import listen_check
from relay_core.diagnostics.network_checks import probe_settings
from relay_core.diagnostics.network_checks import reach
from relay_core.diagnostics.network_checks import targets
from relay_core.diagnostics.store_checks import StoreFacts
from relay_core.diagnostics.store_checks import load_secret
from relay_core.diagnostics.store_checks import read_store
from relay_core.diagnostics.store_checks import secret_check
from relay_core.masking import masked_settings
from relay_core.masking import masked_url
from relay_core.presence import differences
from relay_core.settings import CONFIG_FILE_ENV
from relay_core.settings import Settings


@dataclass
class Report:
    settings: dict[str, Any]
    checks: list[Check]
    accounts: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    relays: list[dict[str, Any]] = field(default_factory=list)  # the running relays' records (presence.py)
    # settings a running relay has otherwise than this shell: name -> {"relays": {instance: value}, "shell": value}
    differences: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(c.level is Level.FAIL for c in self.checks)


async def diagnose(settings: Settings, active: bool = False) -> Report:
    """Everything `relay status` shows; with active=True also what `relay doctor` probes on the network."""
    config = os.environ.get(CONFIG_FILE_ENV)
    checks = [
        Check(
            "settings",
            Level.OK,
            f"{config} with RELAY_* environment over it" if config else "RELAY_* environment over defaults",
        )
    ]
    secret, source, error = load_secret(settings)
    facts = await read_store(settings)
    checks.append(facts.check)
    secret_verdict = secret_check(settings, secret, source, error, facts)
    checks.append(secret_verdict)
    report = Report(masked_settings(settings), checks)
    report.relays = [r.model_dump(exclude={"settings"}) for r in facts.relays]
    report.differences = differences(facts.relays, report.settings)
    if not facts.reachable:
        return await _with_network(report, settings, facts, active)
    # Decryption proves something only with the store's own secret (or a new store's): a readable-by-others
    # warning on a matching secret still counts.
    keyring = Keyring(secret) if secret is not None else None
    if keyring is not None and facts.fingerprint is not None and keyring.fingerprint != facts.fingerprint:
        keyring = None
    now = time.time()
    for account in facts.accounts:
        health = facts.health[account.id]
        verdict = account_check(account, health, keyring, now, settings.signin_warning_days * 86400)
        checks.append(verdict)
        report.accounts.append(account_row(account, health, verdict, now))
    checks.append(accounts_check(report.accounts))
    checks.append(keys_check(facts.keys))
    checks.append(prices_check(facts.models_used, settings.price_overrides))
    report.keys = {"total": len(facts.keys), "enabled": sum(k.enabled for k in facts.keys)}
    return await _with_network(report, settings, facts, active, keyring)


async def _with_network(
    report: Report, settings: Settings, facts: StoreFacts, active: bool, keyring: Keyring | None = None
) -> Report:
    if active:
        accounts = [opened(a, keyring) for a in facts.accounts] if keyring is not None else facts.accounts
        found: dict[Target, list[str]] = {}
        for probed in probe_settings(settings, facts.relays):  # what the relays use, where they run
            for target, users in targets(probed, accounts).items():
                found.setdefault(target, []).extend(u for u in users if u not in found.get(target, []))
        probes = [_noted(reach(t, users), t, settings) for t, users in found.items()]
        probes.append(asyncio.to_thread(listen_check, settings))
        report.checks += await asyncio.gather(*probes)
    return report


async def _noted(probe: Coroutine[Any, Any, Check], target: Target, shell: Settings) -> Check:
    """A probe of a URL setting that this shell has otherwise than the running relays says so."""
    check = await probe
    own = shell.upstream_url if target.what == "upstream" else shell.oauth.token_url
    if target.setting and target.url.rstrip("/") != own.rstrip("/"):
        return replace(check, detail=f"{check.detail}; the running relays' setting (this shell: {masked_url(own)})")
    return check
