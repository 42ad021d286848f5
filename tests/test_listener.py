"""relay_core.listener without a proxy: the certificate checks, binding, and the plain-HTTP warning."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay_core.listener import ListenerError
from relay_core.listener import bind_listener
from relay_core.listener import check_port_free
from relay_core.listener import is_loopback
from relay_core.listener import load_listener_certificate
from relay_core.listener import plain_http_warning
from relay_core.settings import Settings
from tests.support.certificates import make_pair


def test_a_matching_pair_loads_with_its_chain(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path)
    loaded = load_listener_certificate(cert, key)
    assert loaded.cert_path == cert.resolve() and len(loaded.chain) == 1
    assert loaded.leaf.public_key() == loaded.key.public_key()


def test_bad_pairs_are_one_line_each(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path)
    _, other_key = make_pair(tmp_path, "other")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n")
    cases = {
        (tmp_path / "nope.pem", key): f"cannot read TLS certificate {tmp_path / 'nope.pem'}: no such file or directory",
        (cert, tmp_path): f"cannot read TLS key {tmp_path}: is a directory",
        (key, key): f"TLS certificate {key} holds no PEM certificate",
        (cert, cert): f"TLS key {cert} holds no PEM private key",
        (cert, other_key): f"TLS key {other_key} does not belong to certificate {cert}",
    }
    for (cert_path, key_path), message in cases.items():
        with pytest.raises(ListenerError) as error:
            load_listener_certificate(cert_path, key_path)
        assert str(error.value) == message
        assert "\n" not in str(error.value)


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path)
    assert Settings(tls_cert=cert, tls_key=key).tls_cert == cert
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Settings(tls_cert=cert)


def test_a_taken_port_is_refused_even_to_a_shared_port_listener() -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ListenerError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: address already in use$"):
            check_port_free("127.0.0.1", port)
        with pytest.raises(ListenerError, match="address already in use"):
            bind_listener("127.0.0.1", port)
        sibling = bind_listener("127.0.0.1", port, shared_port=True)  # a worker of the same relay may join
        assert [s.getsockname()[1] for s in sibling] == [port]
        for sock in sibling:
            sock.close()
    finally:
        holder.close()


def test_port_zero_binds_a_free_port() -> None:
    sockets = bind_listener("127.0.0.1", 0)
    try:
        assert sockets and all(s.getsockname()[1] > 0 for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_the_plain_http_warning_is_for_listeners_beyond_loopback_only() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "10.0.0.5", "relay.example"))
    assert plain_http_warning("127.0.0.1", 8080, tls=False) is None
    assert plain_http_warning("0.0.0.0", 8080, tls=True) is None
    assert plain_http_warning("0.0.0.0", 8080, tls=False) == (
        "listening on 0.0.0.0:8080 over plain HTTP: team keys cross the network in clear; "
        "use --tls-cert/--tls-key or a TLS proxy in front"
    )
    assert (plain_http_warning("::", 8080, tls=False) or "").startswith("listening on [::]:8080 over plain HTTP")
