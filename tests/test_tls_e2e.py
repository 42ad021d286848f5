"""HTTPS on the listener with a certificate of one's own, the plain-HTTP warning, and a relay that cannot
serve (bad certificate, busy port) exiting non-zero with one line. Real processes on loopback; the
certificate is made here, self-signed for 127.0.0.1 and localhost, and is the only CA the clients trust.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx2
import pytest

from relay_core.models import Account
from tests.support.admin import Admin
from tests.support.certificates import make_pair
from tests.support.claude_code import FINAL_TEXT
from tests.support.claude_code import ClaudeCode
from tests.support.claude_code import ScriptedApi
from tests.support.claude_code import install_problem
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import BIN
from tests.support.relay_process import ROOT
from tests.support.relay_process import WORKERS
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.e2e  # every test here starts relay processes

MODEL = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "hi"}]
WARNING = "team keys cross the network in clear; use --tls-cert/--tls-key or a TLS proxy in front"
DEAD_END = "127.0.0.1:9"
START_TIMEOUT_S = 60  # a loaded machine may take 30 s to start a relay


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("tls"))


def start_tls_relay(start_relay: Callable[..., RelayProcess], engine: str, pair: tuple[Path, Path]) -> RelayProcess:
    """serve and workers take the pair on the command line; plain mitmdump through RELAY_TLS_CERT/KEY."""
    cert, key = pair
    if engine == "mitmdump":
        return start_relay(engine, scheme="https", RELAY_TLS_CERT=str(cert), RELAY_TLS_KEY=str(key))
    return start_relay(engine, args=["--tls-cert", str(cert), "--tls-key", str(key)], scheme="https")


def sdk(relay: RelayProcess, key: str, cafile: Path | None) -> anthropic.Anthropic:
    verify = ssl.create_default_context(cafile=str(cafile)) if cafile else True
    return anthropic.Anthropic(
        base_url=relay.url, auth_token=key, max_retries=0, http_client=httpx2.Client(verify=verify, timeout=20)
    )


@pytest.mark.parametrize("engine", ["serve", "workers", "mitmdump"])
def test_the_sdk_reaches_the_relay_over_https_with_the_given_certificate(
    engine: str, start_relay, pair: tuple[Path, Path], admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_tls_relay(start_relay, engine, pair)
    assert relay.url.startswith("https://127.0.0.1:")
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-console")
    client = sdk(relay, key, cafile=pair[0])  # trusts this certificate only

    answer = client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert answer.content[0].type == "text" and answer.content[0].text == "Hello from the fake upstream!"
    with client.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES) as stream:
        assert stream.get_final_text().strip() == "Hello from the fake upstream!"
    rows = admin.wait_for_requests(2, timeout=10)
    assert [(row["key"], row["requests"], row["errors"]) for row in rows] == [("team", 2, 0)]
    assert [seen.headers.get("x-api-key") for seen in upstream.requests] == ["sk-ant-api03-console"] * 2

    # A client trusting only the public CAs refuses the certificate: the relay served ours, not mitmproxy's.
    with pytest.raises(anthropic.APIConnectionError):
        sdk(relay, key, cafile=None).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert WARNING not in relay.log()


def test_claude_code_reaches_the_relay_over_https(
    start_relay, pair: tuple[Path, Path], admin: Admin, upstream: FakeUpstream, tmp_path: Path
) -> None:
    problem = install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    relay = start_tls_relay(start_relay, "serve", pair)
    pool: list[Account] = [
        admin.add_account(
            "max-1",
            "sk-ant-oat01-tls-" + "a" * 40,
            kind="oauth",
            expires_at=time.time() + 8 * 3600,
            allow_other_clients=False,
        )
    ]
    api = ScriptedApi()
    upstream.handler = api
    try:
        claude = ClaudeCode(
            tmp_path / "home",
            tmp_path / "project",
            relay.url,
            admin.create_key("team"),
            MODEL,
            extra_env={"NODE_EXTRA_CA_CERTS": str(pair[0])},
        )
        run = claude.run("Run the marker command and tell me what it printed.")
        result = run.result
        assert result["subtype"] == "success" and result["is_error"] is False, run.describe()
        assert result["result"] == FINAL_TEXT
        assert api.kinds() == ["tool_call", "final"], api.kinds()
        assert {seen.headers["authorization"] for seen in upstream.requests} == {"Bearer sk-ant-oat01-tls-" + "a" * 40}
        assert pool[0].name == "max-1"
    finally:
        upstream.handler = None


# --- the plain-HTTP warning -----------------------------------------------------------------------------------


def run_until_listening(command: list[str], env: dict[str, str], listeners: int) -> str:
    """Start a relay, wait until `listeners` processes listen, stop it; its whole output."""
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if sum("claude-relay listening at" in seen for seen in lines) >= listeners:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(START_TIMEOUT_S)
    time.sleep(0.5)  # a warning logged after the listening line would still be caught
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    output = "".join(lines)
    assert sum("claude-relay listening at" in line for line in lines) >= listeners, output
    return output


def relay_command(engine: str, listen: str, *extra: str) -> tuple[list[str], int]:
    """The command and how many processes of it listen."""
    if engine == "mitmdump":
        mode = f"reverse:http://{DEAD_END}@{listen}"
        return [str(BIN / "mitmdump"), "--mode", mode, "-s", str(ROOT / "addons" / "bundle.py"), *extra], 1
    if engine == "workers":
        return [str(BIN / "relay"), "serve", "--listen", listen, "--workers", str(WORKERS), *extra], WORKERS
    return [str(BIN / "relay"), "serve", "--listen", listen, *extra], 1


def confdir_for(engine: str, relay_env: dict[str, str]) -> list[str]:
    """mitmdump's CA in the tests' data dir, not in ~/.mitmproxy."""
    return ["--set", f"confdir={relay_env['RELAY_DATA_DIR']}/mitmproxy"] if engine == "mitmdump" else []


@pytest.mark.parametrize("engine", ["serve", "workers", "mitmdump"])
def test_plain_http_beyond_loopback_warns_once(engine: str, relay_env: dict[str, str], admin: Admin) -> None:
    command, listeners = relay_command(engine, "0.0.0.0:0", *confdir_for(engine, relay_env))
    output = run_until_listening(command, relay_env, listeners)
    assert output.count(WARNING) == 1, output
    assert re.search(r"listening on 0\.0\.0\.0:\d+ over plain HTTP: " + re.escape(WARNING), output), output


def test_no_warning_on_loopback_or_with_a_certificate(
    relay_env: dict[str, str], pair: tuple[Path, Path], admin: Admin
) -> None:
    command, listeners = relay_command("serve", "127.0.0.1:0")
    assert WARNING not in run_until_listening(command, relay_env, listeners)
    command, listeners = relay_command("serve", "0.0.0.0:0", "--tls-cert", str(pair[0]), "--tls-key", str(pair[1]))
    assert WARNING not in run_until_listening(command, relay_env, listeners)


# --- a relay that cannot serve exits non-zero with one line -------------------------------------------------------


def run_to_exit(command: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=ROOT
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_bad_certificate_or_key_stops_the_start_with_one_line(
    relay_env: dict[str, str], pair: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = pair
    _, other_key = make_pair(tmp_path, "other")
    missing = tmp_path / "missing.pem"
    cases = [
        (
            ["--tls-cert", str(missing), "--tls-key", str(key)],
            f"Error: cannot read TLS certificate {missing}: no such file or directory",
        ),
        (
            ["--tls-cert", str(cert), "--tls-key", str(missing)],
            f"Error: cannot read TLS key {missing}: no such file or directory",
        ),
        (
            ["--tls-cert", str(cert), "--tls-key", str(other_key)],
            f"Error: TLS key {other_key} does not belong to certificate {cert}",
        ),
        (["--tls-cert", str(key), "--tls-key", str(key)], f"Error: TLS certificate {key} holds no PEM certificate"),
        (["--tls-cert", str(cert)], "Error: settings: tls_cert and tls_key go together: give both or neither"),
    ]
    for args, line in cases:
        command, _ = relay_command("serve", "127.0.0.1:0", *args)
        code, output, _ = run_to_exit(command, relay_env)
        assert code != 0 and output.strip() == line, (args, code, output)


@pytest.mark.parametrize("engine", ["serve", "workers"])
def test_a_second_relay_on_a_busy_port_exits_with_one_line(engine: str, start_relay, relay_env: dict[str, str]) -> None:
    """The first relay holds the port (its workers with SO_REUSEPORT: a second relay's workers must not join)."""
    first = start_relay(engine)
    command, _ = relay_command(engine, f"127.0.0.1:{first.port}")
    code, output, seconds = run_to_exit(command, relay_env)
    assert code != 0, output
    assert output.strip() == f"Error: cannot listen on 127.0.0.1:{first.port}: address already in use", output
    assert DEAD_END not in output
    assert seconds < START_TIMEOUT_S
    assert first.alive()


def test_plain_mitmdump_on_a_busy_port_exits_non_zero(start_relay, relay_env: dict[str, str]) -> None:
    """mitmdump's own start-up check ends it; its message names the mode the operator wrote."""
    first = start_relay("serve")
    command, _ = relay_command("mitmdump", f"127.0.0.1:{first.port}", *confdir_for("mitmdump", relay_env))
    code, output, _ = run_to_exit(command, relay_env)
    assert code != 0 and "address already in use" in output, output
