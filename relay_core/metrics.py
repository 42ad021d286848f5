"""Prometheus metrics of one relay process: requests, tokens, dollars, latency, refusals, sign-in ends and quota.

Each process owns its own registry (not prometheus_client's global one), so tests and several
relays in one interpreter never share counters. Label values are key and account NAMES, never
secrets; they are few (a team has a few dozen keys and a few accounts). Model ids come from
requests and upstream answers, so their number is capped: past `max_models` distinct ids, the
rest are counted as `other` instead of growing the exposition without bound.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from relay_core.health import QuotaWindow
from relay_core.usage import TokenUsage

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_MODELS = 64
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
        self.signin_end = Gauge(
            "relay_account_signin_end_timestamp_seconds",
            "When the account's OAuth sign-in ends (epoch seconds); after it the account must be signed in again.",
            ["account"],
            registry=self.registry,
        )

        self.quota_utilization = Gauge(
            "relay_account_quota_utilization",
            "How full the subscription's quota window is (0-1, may pass 1), from the usage poll and the last "
            "answer's headers; windows: 5h, 7d, 7d_opus, 7d_sonnet. A window that reset since is not shown.",
            ["account", "window"],
            registry=self.registry,
        )
        self.quota_reset = Gauge(
            "relay_account_quota_reset_seconds",
            "When the subscription's quota window resets (epoch seconds).",
            ["account", "window"],
            registry=self.registry,
        )

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
        self.requests.labels(route, str(status) if status else NO_ANSWER, key_label, account_label, model_label).inc()
        if usage is not None:
            for kind, field in TOKEN_KINDS.items():
                self.tokens.labels(kind, key_label, account_label, model_label).inc(getattr(usage, field))
            self.cost.labels(key_label, account_label, model_label).inc(float(cost_usd or 0))
        if account is None:
            return
        if ttfb_s is not None:
            self.ttfb.labels(account_label).observe(max(0.0, ttfb_s))
        if total_s is not None:
            self.latency.labels(account_label).observe(max(0.0, total_s))

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
        self.signin_end.clear()
        for account, ends_at in ends.items():
            self.signin_end.labels(account).set(ends_at)

    def set_quota(self, readings: Mapping[str, Mapping[str, QuotaWindow]]) -> None:
        """Replace the quota gauges with `readings` (account name -> window -> reading)."""
        self.quota_utilization.clear()
        self.quota_reset.clear()
        for account, windows in readings.items():
            for window, reading in windows.items():
                self.quota_utilization.labels(account, window).set(reading.utilization)
                if reading.resets_at is not None:
                    self.quota_reset.labels(account, window).set(reading.resets_at)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of this process's metrics."""
        return generate_latest(self.registry)
