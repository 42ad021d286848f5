"""The server secret and what is derived from it: team-key hashes and encryption of account secrets.

Team keys are stored only as HMAC-SHA256 digests, so a copy of the store does not let anyone call
the relay. Account tokens and API keys are sealed with AES-GCM, bound to their account id, so a
ciphertext cannot be moved onto another account.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_FILE_NAME = "secret.key"
TEAM_KEY_PREFIX = "rk-"
WEB_TOKEN_PREFIX = "rw-"
SEALED_PREFIX = "v1:"
# The request path hashes the caller's team key and opens the chosen account's secret on every request; the
# same few recur, so each process keeps the latest results (bounded, least recently used out first).
RECENT_RESULTS = 1024


class SecretError(Exception):
    """The server secret is missing, unreadable, or does not match the store."""


class DecryptError(Exception):
    """A sealed account secret cannot be opened with the current server secret."""


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """Return the configured secret, else the one in data_dir, creating it (mode 0600) on first use."""
    if configured:
        if len(configured) < 32:
            raise SecretError("RELAY_SECRET_KEY must be at least 32 characters")
        return configured
    path = data_dir / SECRET_FILE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if len(value) < 32:
            raise SecretError(f"{path} is empty or too short; restore it or remove it") from None
        return value
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"claude-relay", info=purpose).derive(secret.encode())


class Keyring:
    """Keys derived from the server secret; the only object that sees it."""

    def __init__(self, secret: str) -> None:
        self._hash_key = _derive(secret, b"team-key-hash")
        self._web_hash_key = _derive(secret, b"web-secret-hash")
        self._aead = AESGCM(_derive(secret, b"account-secret-seal"))
        self.fingerprint = hmac.new(_derive(secret, b"fingerprint"), b"claude-relay", "sha256").hexdigest()[:16]
        self._team_key_hashes = functools.lru_cache(maxsize=RECENT_RESULTS)(self._hash_team_key)
        self._opened = functools.lru_cache(maxsize=RECENT_RESULTS)(self._open)

    @staticmethod
    def new_team_key() -> str:
        return TEAM_KEY_PREFIX + secrets.token_urlsafe(32)

    def hash_team_key(self, key: str) -> str:
        return self._team_key_hashes(key)

    def _hash_team_key(self, key: str) -> str:
        return hmac.new(self._hash_key, key.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_web_token() -> str:
        return WEB_TOKEN_PREFIX + secrets.token_urlsafe(32)

    def hash_web_secret(self, value: str) -> str:
        """Web tokens and page session ids, hashed apart from team keys: neither can stand for the other."""
        return hmac.new(self._web_hash_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> str:
        """The plaintext; DecryptError (never kept) when it was sealed with another secret or for another id."""
        return self._opened(sealed, bound_to)

    def _open(self, sealed: str, bound_to: str) -> str:
        if not sealed.startswith(SEALED_PREFIX):
            raise DecryptError("unknown sealed-secret format")
        raw = base64.urlsafe_b64decode(sealed[len(SEALED_PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], bound_to.encode()).decode()
        except InvalidTag:
            raise DecryptError("sealed with a different server secret") from None
