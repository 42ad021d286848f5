"""`relay ca`: the relay's own CA certificate, for clients of the forward-proxy listener to trust.

The CA is mitmproxy's, in data_dir/mitmproxy: `mitmproxy-ca.pem` holds its private key (kept 0600, never
printed), `mitmproxy-ca-cert.pem` its certificate. The forward listener (first-party mode) ends each
intercepted tunnel with a certificate it mints, and so does a listener without tls_cert; clients trust it
with NODE_EXTRA_CA_CERTS. It is created on first use, by this command or by `relay serve`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_record
from cli.output import format_option

BASENAME = "mitmproxy"  # what mitmproxy's tlsconfig names the files of its CA
KEY_SIZE = 2048  # mitmproxy's default `key_size`
PRIVATE_FILES = (f"{BASENAME}-ca.pem", f"{BASENAME}-ca.p12")  # these two hold the private key


def ensure_ca(confdir: Path) -> Path:
    """The CA certificate's path, the CA created first if there is none; its private key files made 0600
    (mitmproxy writes them so; a copy restored from a backup may not be)."""
    confdir.mkdir(parents=True, exist_ok=True)
    certs.CertStore.from_store(confdir, BASENAME, KEY_SIZE)
    for name in PRIVATE_FILES:
        path = confdir / name
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    return confdir / f"{BASENAME}-ca-cert.pem"


@click.command()
@click.option("--pem", "pem_only", is_flag=True, help="print only the PEM (e.g. `relay ca --pem > relay-ca.pem`)")
@format_option()
@pass_cli_context
def ca(context: CliContext, pem_only: bool, fmt: str) -> None:
    """The relay's CA certificate (path and PEM), to hand to clients of the forward proxy.

    Clients set NODE_EXTRA_CA_CERTS to a copy of it. Creates the CA if the relay has none yet.
    """
    path = ensure_ca(context.settings().data_dir / "mitmproxy")
    pem = path.read_text()
    if pem_only:
        click.echo(pem, nl=False)
        return
    cert = x509.load_pem_x509_certificate(pem.encode())
    record = {
        "path": str(path),
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "pem": pem,
    }
    if fmt == "json":
        emit_record(record, fmt)
        return
    for name in ("path", "subject", "not_after", "sha256"):
        click.echo(f"{name}: {record[name]}")
    click.echo()
    click.echo(pem, nl=False)
