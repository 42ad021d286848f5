"""The real Gemini CLI (pinned in tests/clients) as a test client, sealed off from the machine and the internet.

`run_gemini` runs `gemini -p` headless the way a team member configures it for either auth method
(the gemini-cli reference, gemini-cli.md §1):

- "code-assist": CODE_ASSIST_ENDPOINT + GOOGLE_CLOUD_ACCESS_TOKEN + GOOGLE_GENAI_USE_GCA=true. Calls go to
  `{base}/v1internal:{method}` with the credential as `Authorization: Bearer`.
- "api-key": GOOGLE_GEMINI_BASE_URL + GEMINI_API_KEY, plus `security.auth.selectedType: gemini-api-key`
  in settings (without it the CLI picks its "gateway" type and exits 41). Calls go to
  `{base}/v1beta/models/{model}:...` with the credential as `x-goog-api-key`.

Each run gets a fresh HOME (settings: usage statistics and auto-update off) and an environment built from
nothing, so no user config, cached Google login or host GEMINI_* variable leaks in. The CLI talks to Google
directly for a few things whatever the base URL says (Code Assist: `GET www.googleapis.com/oauth2/v2/userinfo`
with the token at every start); HTTPS_PROXY/HTTP_PROXY point at a loopback proxy that refuses every request
and records its target (`GeminiRun.outside`), and NO_PROXY lets the loopback base URL through directly. The
CLI runs in a process group of its own and the whole group is killed on timeout: it relaunches itself as a
child node process, which would otherwise outlive the kill and hold the output pipes open.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
PACKAGE = "@google/gemini-cli"
GEMINI = CLIENTS / "node_modules" / ".bin" / "gemini"

Method = Literal["code-assist", "api-key"]


def pinned_version() -> str:
    return str(json.loads((CLIENTS / "package.json").read_text())["dependencies"][PACKAGE])


def install_problem() -> str | None:
    """Why the pinned CLI cannot run here, or None when `gemini --version` is the pinned one."""
    hint = "run `make clients` (npm ci in tests/clients)"
    if not GEMINI.exists():
        return f"Gemini CLI is not installed at {GEMINI}; {hint}"
    try:
        done = subprocess.run(
            [str(GEMINI), "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{GEMINI} --version failed ({error}); {hint}"
    if done.stdout.strip() != pinned_version():
        return f"{GEMINI} is {done.stdout.strip()!r}, tests/clients/package.json pins {pinned_version()}; {hint}"
    return None


class GeminiRun(subprocess.CompletedProcess[str]):
    """A finished `gemini` run: CompletedProcess plus its duration and what it tried to reach outside."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str, seconds: float, outside: list[str]):
        super().__init__(args, returncode, stdout, stderr)
        self.seconds = seconds
        # Targets the CLI asked the (refusing) proxy for, e.g. "CONNECT www.googleapis.com:443".
        self.outside = outside

    def json(self) -> dict[str, Any]:
        """The single JSON object of `-o json` (response, stats, error)."""
        try:
            answer = json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"not JSON on stdout\n{self.describe()}") from None
        assert isinstance(answer, dict), self.describe()
        return answer

    def describe(self) -> str:
        return (
            f"gemini exited {self.returncode} after {self.seconds:.1f} s\nargs: {self.args}\n"
            f"outside: {self.outside}\nstdout: {self.stdout[-4000:]}\nstderr: {self.stderr[-4000:]}"
        )


class RefusingProxy:
    """An HTTP proxy on loopback that forwards nothing: it reads the request line, records its target and
    answers 403 at once, so a call meant for the internet fails fast and shows up in the test."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.targets: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> RefusingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n" not in data and len(data) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            method, _, rest = data.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            with self._lock:
                self.targets.append(f"{method} {rest.rsplit(' ', 1)[0]}".strip())
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def settings(method: Method) -> dict[str, Any]:
    """~/.gemini/settings.json for a test run: no usage statistics (Clearcut posts to play.googleapis.com and
    the x-gemini-api-privileged-user-id header), no update check; the api-key method needs its selectedType."""
    chosen: dict[str, Any] = {
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }
    if method == "api-key":
        chosen["security"] = {"auth": {"selectedType": "gemini-api-key"}}
    return chosen


def gemini_env(
    method: Method, base_url: str, credential: str, model: str, home: Path, proxy_url: str
) -> dict[str, str]:
    """The environment of one run, built from nothing but PATH (and USER) of the host."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "USER": os.environ.get("USER", "relay-test"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home / "tmp"),  # crash reports (gemini-client-error-*.json) land here
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "NO_COLOR": "1",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",  # else headless runs in an untrusted folder exit 55
        # the machine-wide settings files (/etc/gemini-cli/...) must not apply: point them at nothing
        "GEMINI_CLI_SYSTEM_SETTINGS_PATH": str(home / "no-system-settings.json"),
        "GEMINI_CLI_SYSTEM_DEFAULTS_PATH": str(home / "no-system-defaults.json"),
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "GEMINI_MODEL": model,
    }
    if method == "code-assist":
        env |= {
            "CODE_ASSIST_ENDPOINT": base_url,
            "GOOGLE_CLOUD_ACCESS_TOKEN": credential,
            "GOOGLE_GENAI_USE_GCA": "true",
        }
    else:
        env |= {"GOOGLE_GEMINI_BASE_URL": base_url, "GEMINI_API_KEY": credential}
    return env


@contextlib.contextmanager
def _home(home: Path | None) -> Iterator[Path]:
    if home is not None:
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="gemini-home-") as made:
        yield Path(made)


def run_gemini(
    prompt: str,
    *,
    method: Method,
    base_url: str,
    credential: str,
    model: str = "gemini-2.5-pro",
    timeout: float = 60,
    extra_env: dict[str, str] | None = None,
    json_output: bool = False,
    extra_args: Sequence[str] = (),
    home: Path | None = None,
) -> GeminiRun:
    """`gemini -p prompt` against `base_url`, headless; `-o json` when json_output (per-model token stats).

    `home` keeps the run's HOME for the test to inspect (a fresh temporary one otherwise); the working
    directory is `home/project`. A run that outlives `timeout` seconds is killed (with its child) and
    fails the test with its output.
    """
    args = [str(GEMINI), "-p", prompt, *(["-o", "json"] if json_output else []), *extra_args]
    with _home(home) as root, RefusingProxy() as proxy:
        for path in (root / ".gemini", root / "tmp", root / "project"):
            path.mkdir(parents=True, exist_ok=True)
        (root / ".gemini" / "settings.json").write_text(json.dumps(settings(method), indent=2))
        env = gemini_env(method, base_url, credential, model, root, proxy.url) | (extra_env or {})
        started = time.monotonic()
        process = subprocess.Popen(
            args,
            env=env,
            cwd=root / "project",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # the group's leader is not reaped yet (at worst a zombie), so its id still names our group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=10)
            raise AssertionError(
                f"gemini did not finish within {timeout} s\nargs: {args}\noutside: {proxy.targets}\n"
                f"stdout: {stdout[-4000:]}\nstderr: {stderr[-4000:]}"
            ) from None
        seconds = time.monotonic() - started
        return GeminiRun(args, process.returncode, stdout, stderr, seconds, list(proxy.targets))
