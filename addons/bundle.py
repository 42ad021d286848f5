"""The relay's addon chain, in order. Load it with `mitmdump -s addons/bundle.py` or `relay serve`."""

from __future__ import annotations

from addons.auth import Auth
from addons.client_timeouts import ClientTimeouts
from addons.concurrency_lease import ConcurrencyLease
from addons.connection_cap import ConnectionCap
from addons.early_answers import EarlyAnswers
from addons.error_pages import ErrorPages
from addons.fail_closed_gate import FailClosedGate
from addons.failover import Failover
from addons.failover_stream import FailoverStream
from addons.forward_proxy import ForwardProxy
from addons.graceful_drain import GracefulDrain
from addons.listener_tls import ListenerTls
from addons.metrics import Metrics
from addons.queue_lock import QueueLock
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from addons.request_log import RequestLog
from addons.router import Router
from addons.self_service import SelfService
from addons.service_endpoints import ServiceEndpoints
from addons.upstream_timeouts import UpstreamTimeouts
from addons.web_page import WebPage
from relay_core.runtime import Runtime


def relay_chain(runtime: Runtime | None = None, warn_plain_http: bool = True) -> RelayChain:
    """`warn_plain_http=False`: the caller (`relay serve`) gives the plain-HTTP warning itself, once."""
    shared = RelayRuntime(runtime)
    metrics = Metrics(shared)
    # One chain entry: each further entry costs every hook of every request a call through mitmproxy's
    # dispatch (about 3 µs each, 8 hooks a request, docs/profile.md), whether or not it has the hook.
    return RelayChain(
        [
            shared,
            ListenerTls(shared, warn_plain_http),
            ErrorPages(),
            ConnectionCap(shared),
            ClientTimeouts(shared),
            ForwardProxy(shared),  # before anything answers a request: the forward listener serves only the API
            metrics,
            ServiceEndpoints(shared),
            SelfService(shared),
            WebPage(shared),
            Auth(shared),
            Router(shared),
            QueueLock(shared),
            Failover(shared),
            Recorder(shared),
            UpstreamTimeouts(shared),  # after the Recorder (its stream callable), before the request log
            ConcurrencyLease(shared),
            RequestLog(shared),
            GracefulDrain(shared),  # after the Recorder: a flow counts as finished once its usage is recorded
            FailoverStream(),  # lets Failover send a request again (its upstream_answer hook)
            EarlyAnswers(),  # every answer from the headers is set by its requestheaders hook
            # Last, after every other hook (RelayChain runs them even when one raised): no flow the Router did
            # not route goes upstream, and the metrics count each answer as the client gets it.
            FailClosedGate(),
            metrics.tally,
        ]
    )


addons = [relay_chain()]
