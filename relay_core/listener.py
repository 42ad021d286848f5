"""The relay's listening socket and the certificate it serves: checked before anything starts.

A relay that cannot listen, or was given a certificate it cannot use, must say so in one line and
exit non-zero (systemd and container runtimes then notice), instead of logging mitmproxy's message,
which names the internal dead-end target, and running on without a listener. The socket is bound
here, before the proxy starts, and handed to it; mitmproxy only accepts on it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

PLAIN_HTTP_WARNING = (
    "listening on {address} over plain HTTP: team keys cross the network in clear; "
    "use --tls-cert/--tls-key or a TLS proxy in front"
)
LISTEN_BACKLOG = 4096


class ListenerError(Exception):
    """The relay cannot serve its listener as configured; the message is the one line to show."""


@dataclass(frozen=True)
class ListenerCertificate:
    """The certificate (with any intermediates after it in the same file) and key clients are served."""

    cert_path: Path
    chain: list[x509.Certificate]  # the leaf first
    key: PrivateKeyTypes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_listener_certificate(cert_path: Path, key_path: Path) -> ListenerCertificate:
    """Read and check the pair now, so a bad path or a key of another certificate stops the start."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ListenerError(f"TLS certificate {cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ListenerError(f"TLS key {key_path} is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ListenerError(f"TLS key {key_path} holds no PEM private key") from None
    if chain[0].public_key() != key.public_key():
        raise ListenerError(f"TLS key {key_path} does not belong to certificate {cert_path}")
    return ListenerCertificate(cert_path=cert_path.resolve(), chain=chain, key=key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ListenerError(f"cannot read TLS {what} {path}: {_reason(exc)}") from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_warning(host: str, port: int, tls: bool) -> str | None:
    """The start-up warning for a listener other machines reach without TLS, else None."""
    if tls or is_loopback(host):
        return None
    return PLAIN_HTTP_WARNING.format(address=format_address(host, port))


def forward_proxy_warning(host: str, allow_hosts: list[str]) -> str | None:
    """The start-up warning for a forward listener other machines reach that tunnels hosts for a key: that key
    travels in clear in the CONNECT's Proxy-Authorization (intercepted tunnels carry theirs inside TLS)."""
    if not allow_hosts or is_loopback(host):
        return None
    return (
        f"the forward proxy on {host} tunnels forward_allow_hosts for a team key in Proxy-Authorization, which "
        "crosses the network in clear; keep it on a trusted network"
    )


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int, shared_port: bool = False) -> list[socket.socket]:
    """Bound, not yet listening, TCP sockets for host:port (one per address the host resolves to).

    SO_REUSEADDR as asyncio sets it; SO_REUSEPORT only for the workers of one `--workers` relay.
    An IPv6 socket is IPv6 only, as asyncio makes it.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(f"cannot listen on {format_address(host, port)}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address[0], port, *address[2:]))
            except OSError as exc:
                raise ListenerError(f"cannot listen on {format_address(host, port)}: {_reason(exc)}") from None
            port = sock.getsockname()[1]  # port 0: every further address gets the port the first one got
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def check_port_free(host: str, port: int) -> None:
    """Raise ListenerError if another process listens on host:port, even one sharing it with SO_REUSEPORT.

    A bind without SO_REUSEPORT fails on any port in use, so a second `relay serve --workers N` on the same
    port is refused here instead of its workers quietly joining the first relay's.
    """
    for sock in bind_listener(host, port):
        sock.close()


def _reason(exc: OSError) -> str:
    """`address already in use`, not `[Errno 98] Address already in use`."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return str(exc.strerror or exc).lower()
