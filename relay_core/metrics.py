"""Prometheus metrics of a relay: requests, tokens, dollars, latency, refusals, and account and key state.

Each process owns its own registry (not prometheus_client's global one), so tests and several
relays in one interpreter never share counters. Under `relay serve --workers N` a scrape lands on
any worker, so the supervisor sets PROMETHEUS_MULTIPROC_DIR: prometheus_client then keeps every
counter and histogram in a file per process, and a scrape sums the files of all workers (the dead
ones' too, so counters never go back). The state gauges (accounts, keys, quota) are not per-process
values at all: they describe the shared store, so whichever process is scraped computes them afresh
(`StateGauges`), and no worker's stale copy can linger. No `_created` series: they doubled the
output and say nothing a scraper needs. Label values are key and account NAMES, never
secrets; they are few (a team has a few dozen keys and a few accounts). Model ids come from
requests and upstream answers, so their number is capped: past `max_models` distinct ids, the
rest are counted as `other` instead of growing the exposition without bound.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import disable_created_metrics
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import QuotaWindow
from relay_core.health import account_state
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.store import StoreError
from relay_core.usage import TokenUsage

if TYPE_CHECKING:
    from relay_core.runtime import Runtime

disable_created_metrics()
logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own: set by the `--workers` supervisor

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_MODELS = 64
MAX_CACHED_SERIES = 4096  # label sets whose series RelayMetrics keeps at hand (past that, it starts over)
OTHER_MODEL = "other"
NO_ANSWER = "error"  # the status label of exchanges that ended without a complete answer
REASON = re.compile(r"[a-z_]{1,40}")  # the shape of Anthropic's error types

# Messages API answers take from under a second to many minutes (long thinking, long outputs).
TTFB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

# Label value of each relay_tokens_total kind, and the TokenUsage field it counts.
TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
}


# Every value of relay_account_state's `state` label (relay_core.health.account_state's words).
ACCOUNT_STATES = (
    "active",
    "paused",
    "limited",
    "expired",
    "disabled",
    *(s.value for s in AccountState if s is not AccountState.OK),
)


def multiprocess_dir() -> str | None:
    """The directory of the processes' metric files when several workers share the port, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def is_loopback(host: str) -> bool:
    """A peer on this machine (127.0.0.0/8, ::1, or either as an IPv4-mapped IPv6 address)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def model_id(model: str | None) -> str:
    """The model id a label shows: Claude Code's `[1m]` display suffix names no other model."""
    return (model or "").removesuffix("[1m]").strip()


class RelayMetrics:
    """Counters and histograms fed with plain values, so they are testable without mitmproxy."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_models = max_models
        self._models: set[str] = set()
        self.requests = Counter(
            "relay_requests",
            "Requests answered, by route and the HTTP status the client got (error: no complete answer).",
            ["route", "status", "key", "account", "model"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "relay_tokens",
            "Tokens of relayed answers as the usage report counts them, by kind.",
            ["kind", "key", "account", "model"],
            registry=self.registry,
        )
        self.cost = Counter(
            "relay_cost_usd",
            "Cost in US dollars of relayed answers at list prices (with the configured overrides).",
            ["key", "account", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relay_upstream_latency_seconds",
            "From the request leaving the relay to the upstream answer's last byte.",
            ["account"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "relay_time_to_first_byte_seconds",
            "From the request's first byte at the relay to the upstream answer's headers.",
            ["account"],
            buckets=TTFB_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "relay_refusals",
            "Answers the relay made itself instead of the upstream's, by their error.type.",
            ["reason"],
            registry=self.registry,
        )
        self.third_party = Counter(
            "relay_upstream_third_party_refusals",
            'Upstream 400s refusing a request as not from Claude Code ("Third-party apps now draw from your '
            'extra usage"), by account: a client the relay took for Claude Code, or an allowed other client.',
            ["account"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "relay_failovers",
            "Attempts that failed before their answer began and went on to another account, by the failed account.",
            ["account"],
            registry=self.registry,
        )
        # The series one answer adds to, found once per label set: `labels()` takes a lock and checks every
        # value on each call, nine times per request (the label sets are few; see the module's docstring).
        self._exchange_series: dict[tuple[str, ...], tuple[Counter, list[tuple[str, Counter]], Counter]] = {}
        self._account_series: dict[str, tuple[Histogram, Histogram]] = {}
        self.state = StateGauges()
        self.known_accounts: list[Account] = []  # as the last scrape read them (relay_core.metrics.read_state)
        self.known_keys: list[TeamKey] = []
        if multiprocess_dir() is None:
            self.registry.register(self.state)

    def model_label(self, model: str | None) -> str:
        """The model's id; once `max_models` ids were seen, any new one is `other`."""
        label = model_id(model)
        if not label or label in self._models:
            return label
        if len(self._models) >= self.max_models:
            return OTHER_MODEL
        self._models.add(label)
        return label

    def observe_response(
        self,
        route: str,
        status: int,
        key: str | None,
        account: str | None,
        model: str | None,
        usage: TokenUsage | None,
        cost_usd: Decimal | None,
        ttfb_s: float | None,
        total_s: float | None,
    ) -> None:
        """One finished exchange. `status` 0: it ended without a complete answer (client gone, upstream died).

        Tokens and cost are counted only when `usage` is given (metered answers); timings only for an
        exchange that reached an account.
        """
        model_label = self.model_label(model)
        key_label, account_label = key or "", account or ""
        requests, tokens, cost = self._exchange(
            route, str(status) if status else NO_ANSWER, key_label, account_label, model_label
        )
        requests.inc()
        if usage is not None:
            for field, series in tokens:
                series.inc(getattr(usage, field))
            cost.inc(float(cost_usd or 0))
        if account is None:
            return
        ttfb, latency = self._account_series.get(account_label) or self._new_account_series(account_label)
        if ttfb_s is not None:
            ttfb.observe(max(0.0, ttfb_s))
        if total_s is not None:
            latency.observe(max(0.0, total_s))

    def _exchange(
        self, route: str, status: str, key: str, account: str, model: str
    ) -> tuple[Counter, list[tuple[str, Counter]], Counter]:
        """The request counter, the token counters (usage field, series) and the cost counter of one label set."""
        labels = (route, status, key, account, model)
        found = self._exchange_series.get(labels)
        if found is None:
            if len(self._exchange_series) >= MAX_CACHED_SERIES:
                self._exchange_series.clear()
            tokens = [(field, self.tokens.labels(kind, key, account, model)) for kind, field in TOKEN_KINDS.items()]
            found = (self.requests.labels(*labels), tokens, self.cost.labels(key, account, model))
            self._exchange_series[labels] = found
        return found

    def _new_account_series(self, account: str) -> tuple[Histogram, Histogram]:
        if len(self._account_series) >= MAX_CACHED_SERIES:
            self._account_series.clear()
        found = self._account_series[account] = (self.ttfb.labels(account), self.latency.labels(account))
        return found

    def observe_refusal(self, error_type: str) -> None:
        """One answer made by the relay itself; types are the relay's own, anything else is `unknown`."""
        reason = error_type if REASON.fullmatch(error_type) else "unknown"
        self.refusals.labels(reason).inc()

    def observe_failovers(self, failed_accounts: list[str]) -> None:
        for account in failed_accounts:
            self.failovers.labels(account).inc()

    def observe_third_party_refusal(self, account: str) -> None:
        self.third_party.labels(account).inc()

    def set_signin_ends(self, ends: Mapping[str, float]) -> None:
        """Replace the sign-in ends with `ends` (account name -> epoch): deleted or renamed accounts drop out."""
        self.state.signin_ends = dict(ends)

    def set_quota(self, readings: Mapping[str, Mapping[str, QuotaWindow]]) -> None:
        """Replace the quota gauges with `readings` (account name -> window -> reading)."""
        self.state.quota = {account: dict(windows) for account, windows in readings.items()}

    def set_accounts(self, accounts: Iterable[Account], health: Mapping[str, AccountHealth], now: float) -> None:
        """Replace the account state and cooldown gauges (health: account id -> health; missing: healthy)."""
        self.state.accounts = {}
        self.state.cooldown_ends = {}
        for account in accounts:
            seen = health.get(account.id, AccountHealth())
            self.state.accounts[account.name] = account_state(account, seen, now)
            cooling = [until for until in seen.cooldowns.values() if until > now]
            self.state.cooldown_ends[account.name] = max(cooling, default=0.0)

    def set_budgets(self, keys: Iterable[TeamKey], spend_nanousd: Mapping[str, Mapping[str, int]]) -> None:
        """Replace the budget gauges: each enabled key's budget per period less its spend in the current one
        (spend_nanousd: key id -> period -> spend). Negative when a long answer ran past the budget."""
        self.state.budget_left = {
            key.name: {
                period: (budget - spend_nanousd.get(key.id, {}).get(period, 0)) / 1e9
                for period, budget in key.limits.budgets_nanousd.items()
            }
            for key in keys
            if key.enabled and key.limits.budgets_nanousd
        }

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4): this process's counters, or with several workers
        the sum of every worker's (prometheus_client's MultiProcessCollector), and the state gauges."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        registry.register(self.state)
        return generate_latest(registry)


async def read_state(metrics: RelayMetrics, runtime: Runtime, now: float) -> None:
    """Fill the state gauges for a scrape with one store round trip (relay_core/store/gauges.py): accounts,
    keys, the health and budget spend of those the last scrape (or the quota poller's pass) found. Sign-in
    ends and quota are what the token refresher's and the quota poller's last passes read. A failed read
    keeps the gauges as last read (the scrape still answers)."""
    metrics.set_signin_ends(runtime.refresher.signin_ends)
    metrics.set_quota(runtime.quota.readings)
    accounts = metrics.known_accounts or runtime.quota.accounts
    keys = metrics.known_keys or runtime.quota.keys
    try:
        reading = await runtime.store.gauge_reads([a.id for a in accounts], keys, periods(now, runtime.store.zone))
    except StoreError as exc:
        logger.warning("/metrics: accounts and keys could not be read: %s", exc)
        return
    metrics.known_accounts, metrics.known_keys = reading.accounts, reading.keys
    metrics.set_accounts(reading.accounts, reading.health, now)
    metrics.set_budgets(reading.keys, reading.spend_nanousd)


@dataclass
class StateGauges(Collector):
    """Gauges of the shared state as this process last read it, made at scrape time (never per-process files)."""

    signin_ends: dict[str, float] = field(default_factory=dict)  # account name -> epoch
    quota: dict[str, dict[str, QuotaWindow]] = field(default_factory=dict)  # account name -> window -> reading
    accounts: dict[str, str] = field(default_factory=dict)  # account name -> account_state word
    cooldown_ends: dict[str, float] = field(default_factory=dict)  # account name -> epoch, 0: not cooling
    budget_left: dict[str, dict[str, float]] = field(default_factory=dict)  # key name -> period -> USD

    def __hash__(self) -> int:  # a registry keeps its collectors in a dict
        return id(self)

    def collect(self) -> Iterator[Metric]:
        signin = GaugeMetricFamily(
            "relay_account_signin_end_timestamp_seconds",
            "When the account's OAuth sign-in ends (epoch seconds); after it the account must be signed in again.",
            labels=["account"],
        )
        for account, ends_at in self.signin_ends.items():
            signin.add_metric([account], ends_at)
        utilization = GaugeMetricFamily(
            "relay_account_quota_utilization",
            "How full the subscription's quota window is (0-1, may pass 1), from the usage poll and the last "
            "answer's headers; windows: 5h, 7d, 7d_opus, 7d_sonnet. A window that reset since is not shown.",
            labels=["account", "window"],
        )
        reset = GaugeMetricFamily(
            "relay_account_quota_reset_seconds",
            "When the subscription's quota window resets (epoch seconds).",
            labels=["account", "window"],
        )
        for account, windows in self.quota.items():
            for window, reading in windows.items():
                utilization.add_metric([account, window], reading.utilization)
                if reading.resets_at is not None:
                    reset.add_metric([account, window], reading.resets_at)
        state = GaugeMetricFamily(
            "relay_account_state",
            "1 for the account's state as `relay accounts list` names it, 0 for every other state.",
            labels=["account", "state"],
        )
        for account, current in self.accounts.items():
            for name in ACCOUNT_STATES:
                state.add_metric([account, name], float(name == current))
        cooldown = GaugeMetricFamily(
            "relay_account_cooldown_end_timestamp_seconds",
            "When the account's last cooldown ends (epoch seconds); 0 when it is not cooling down.",
            labels=["account"],
        )
        for account, until in self.cooldown_ends.items():
            cooldown.add_metric([account], until)
        budget = GaugeMetricFamily(
            "relay_key_budget_left_usd",
            "US dollars the key may still spend in the current budget period (day, week, month, total).",
            labels=["key", "period"],
        )
        for key, left in self.budget_left.items():
            for period, usd in left.items():
                budget.add_metric([key, period], usd)
        yield from (signin, utilization, reset, state, cooldown, budget)
