"""Base-URL and proxy credentials: sealed at rest, masked when shown, opened only to send."""

from __future__ import annotations

from relay_core.account_urls import opened
from relay_core.account_urls import seal_urls
from relay_core.account_urls import set_url
from relay_core.account_urls import shown_url
from relay_core.crypto import Keyring
from relay_core.models import Account
from relay_core.models import AccountKind

KEYRING = Keyring("x" * 43)


def account(**urls: str | None) -> Account:
    return Account(name="a", kind=AccountKind.CONSOLE, sealed_secret="s", **urls)


def test_credentials_leave_the_stored_record_and_come_back_to_send() -> None:
    record = seal_urls(account(proxy="http://us%40er:p%3Ass@10.0.0.1:3128", base_url="https://gw.example/v"), KEYRING)
    stored = record.model_dump_json()
    assert "us%40er" not in stored and "p%3Ass" not in stored
    assert record.proxy == "http://10.0.0.1:3128" and record.base_url == "https://gw.example/v"
    assert shown_url(record, "proxy") == "http://***@10.0.0.1:3128"
    assert opened(record, KEYRING).proxy == "http://us%40er:p%3Ass@10.0.0.1:3128"
    assert opened(record, KEYRING).base_url == "https://gw.example/v"
    before = record.model_dump()
    seal_urls(record, KEYRING)
    assert record.model_dump() == before  # sealing again changes nothing


def test_a_new_url_replaces_the_old_credentials() -> None:
    record = seal_urls(account(proxy="http://u:p@10.0.0.1:3128"), KEYRING)
    set_url(record, "proxy", "http://10.0.0.2:3128", KEYRING)
    assert record.sealed_url_credentials == {} and opened(record, KEYRING).proxy == "http://10.0.0.2:3128"
    set_url(record, "proxy", None, KEYRING)
    assert record.proxy is None


def test_a_record_from_before_sealing_still_works() -> None:
    legacy = account(proxy="http://u:p@10.0.0.1:3128")
    assert opened(legacy, KEYRING).proxy == "http://u:p@10.0.0.1:3128"
