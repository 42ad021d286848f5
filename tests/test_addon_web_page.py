"""The page's requests know when the client came over TLS, so its session cookie is Secure."""

from __future__ import annotations

from mitmproxy.test import tflow
from mitmproxy.test import tutils

from addons.web_page import WebPage


def test_a_client_on_the_relays_own_tls_gets_a_secure_page_request() -> None:
    flow = tflow.tflow(req=tutils.treq(scheme=b"http", path=b"/relay/"))  # the dead-end target's scheme
    flow.client_conn.timestamp_tls_setup = None
    assert WebPage._page_request(flow).secure is False
    flow.client_conn.timestamp_tls_setup = 1.0
    assert WebPage._page_request(flow).secure is True


def test_a_tls_proxy_in_front_says_so_with_x_forwarded_proto() -> None:
    flow = tflow.tflow(req=tutils.treq(scheme=b"http", path=b"/relay/"))
    flow.client_conn.timestamp_tls_setup = None
    flow.request.headers["x-forwarded-proto"] = "https"
    assert WebPage._page_request(flow).secure is True
