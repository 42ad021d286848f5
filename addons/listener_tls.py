"""Serves TLS clients the relay's own certificate (settings tls_cert/tls_key), and warns about plain HTTP.

mitmproxy detects TLS per connection on the reverse listener and answers it with a certificate from
its certificate store: by default one minted by its own CA. This puts the configured certificate in
that store under "*", the entry mitmproxy picks for any server name and for clients sending none
(an IP address); the certificate file is also the chain file, so intermediates after the leaf are sent.
The store is rebuilt whenever mitmproxy's own certificate options change, so the entry is put back then.
With a forward-proxy listener the intercept hosts (api.anthropic.com) get entries of their own, minted by
the CA as mitmproxy would: clients of the forward listener check that name, not the relay's.
"""

from __future__ import annotations

import datetime
import logging

from cryptography import x509
from mitmproxy import certs
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import tls
from mitmproxy.proxy.mode_specs import RegularMode

from addons.relay_runtime import RelayRuntime
from relay_core.listener import ListenerCertificate
from relay_core.listener import ListenerError
from relay_core.listener import load_listener_certificate
from relay_core.listener import plain_http_warning

logger = logging.getLogger(__name__)

ANY_SERVER_NAME = "*"


class ListenerTls:
    def __init__(self, shared: RelayRuntime, warn_plain_http: bool = True) -> None:
        self.shared = shared
        self.warn_plain_http = warn_plain_http  # `relay serve` warns once itself, before starting its workers
        self.certificate: ListenerCertificate | None = None
        self.entry: certs.CertStoreEntry | None = None
        self.intercepted: dict[str, certs.CertStoreEntry] = {}  # forward intercept host -> its CA-minted entry

    def configure(self, updated: set[str]) -> None:
        if not self.shared.configured():
            return
        settings = self.shared.current().settings
        if settings.tls_cert is None or settings.tls_key is None:
            return
        if self.certificate is None:
            try:
                self.certificate = load_listener_certificate(settings.tls_cert, settings.tls_key)
            except ListenerError as exc:
                raise exceptions.OptionsError(f"claude-relay cannot start: {exc}") from exc
            self.entry = certs.CertStoreEntry(
                cert=certs.Cert(self.certificate.leaf),
                privatekey=self.certificate.key,  # type: ignore[arg-type]  # any key type pyOpenSSL takes
                chain_file=self.certificate.cert_path,
                chain_certs=[certs.Cert(cert) for cert in self.certificate.chain],
            )
        if ctx.master.addons.get("tlsconfig") is None:
            raise exceptions.OptionsError(
                "claude-relay cannot serve tls_cert: mitmproxy's tlsconfig addon is not loaded"
            )
        self.install()

    def tls_start_client(self, _data: tls.TlsData) -> None:
        """Again before each handshake: under mitmdump, scripts are configured before tlsconfig, which may
        then rebuild its store without the entry; scripts' hooks also run before tlsconfig's, so this is in time."""
        self.install()

    def install(self) -> None:
        """Put the entry into tlsconfig's current store unless it is there (an identity check: cheap)."""
        if self.entry is None:
            return
        store = getattr(ctx.master.addons.get("tlsconfig"), "certstore", None)
        if store is None:
            return
        if store.certs.get(ANY_SERVER_NAME) is not self.entry:
            store.add_cert(self.entry, ANY_SERVER_NAME)
        if self.shared.current().settings.forward_listen is not None:
            self.install_intercepted(store)

    def install_intercepted(self, store: certs.CertStore) -> None:
        """The forward listener's intercept hosts keep certificates of the relay's CA: the "*" entry would
        otherwise answer for them too, with a certificate of another name that no client accepts. An exact
        name wins over "*" in mitmproxy's lookup; each is minted again a day before it expires."""
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        for host in self.shared.current().settings.forward_intercept_hosts:
            entry = self.intercepted.get(host)
            if entry is None or entry.cert.notafter < soon:
                entry = certs.CertStoreEntry(
                    cert=certs.dummy_cert(store.default_privatekey, store.default_ca._cert, host, [x509.DNSName(host)]),
                    privatekey=store.default_privatekey,
                    chain_file=store.default_chain_file,
                    chain_certs=store.default_chain_certs,
                )
                self.intercepted[host] = entry
            if store.certs.get(host) is not entry:
                store.add_cert(entry, host)

    def running(self) -> None:
        if not self.warn_plain_http or not self.shared.configured():
            return
        server = ctx.master.addons.get("proxyserver")
        tls = self.shared.current().settings.tls_cert is not None or bool(ctx.options.certs)
        reverse = [i for i in (server.servers if server else []) if not isinstance(i.mode, RegularMode)]
        for host, port, *_ in (address for instance in reverse for address in instance.listen_addrs):
            warning = plain_http_warning(host, port, tls)  # a forward proxy's keys travel inside TLS tunnels
            if warning:
                logger.warning(warning)
                return  # once, however many sockets
