"""Credentials in an account's base URL or proxy URL are sealed at rest, like its token.

An admin may give `http://user:pass@proxy:3128`. The record keeps the URL without `user:pass` (stored
and shown as is) and the sealed `user:pass` next to it; only the code that sends requests through the
account opens a copy with both put back. Records written before this keep their URL as it was, and work.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from relay_core.crypto import Keyring
from relay_core.masking import MASK
from relay_core.models import Account

URL_FIELDS = ("base_url", "proxy")


def _split(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    return urlunsplit(parts._replace(netloc=host)), userinfo


def _join(url: str, userinfo: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def _bound_to(account: Account, field: str) -> str:
    return f"{account.id}:{field}"


def set_url(account: Account, field: str, url: str | None, keyring: Keyring) -> None:
    """Give the account a new base URL or proxy, sealing any credentials in it."""
    account.sealed_url_credentials.pop(field, None)
    if url is not None:
        url, userinfo = _split(url)
        if userinfo:
            account.sealed_url_credentials[field] = keyring.seal(userinfo, _bound_to(account, field))
    setattr(account, field, url)


def seal_urls(account: Account, keyring: Keyring) -> Account:
    """The account with the credentials in its URLs sealed (those sealed before stay as they are)."""
    for field in URL_FIELDS:
        url = getattr(account, field)
        if url is not None and _split(url)[1] is not None:
            set_url(account, field, url, keyring)
    return account


def opened(account: Account, keyring: Keyring) -> Account:
    """A copy whose URLs carry their credentials again, for sending requests; never stored or shown."""
    if not account.sealed_url_credentials:
        return account
    update = {}
    for field, sealed in account.sealed_url_credentials.items():
        url = getattr(account, field)
        if url is not None:
            update[field] = _join(url, keyring.open(sealed, _bound_to(account, field)))
    return account.model_copy(update=update)


def shown_url(account: Account, field: str) -> str | None:
    """The URL as a person may see it: sealed credentials as a mask."""
    url = getattr(account, field)
    if url is None or field not in account.sealed_url_credentials:
        return url
    return _join(url, MASK)
