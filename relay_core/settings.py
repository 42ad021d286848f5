"""Relay settings: environment (prefix RELAY_) over an optional TOML file over documented defaults.

Every URL, header value, timeout and window lives here, because the Claude API facts they encode
drift; config/relay.example.toml explains each one.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from typing import Any
from zoneinfo import ZoneInfo
from zoneinfo import ZoneInfoNotFoundError

from pydantic import AliasChoices
from pydantic import BaseModel
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator
from pydantic_settings import BaseSettings
from pydantic_settings import NoDecode
from pydantic_settings import PydanticBaseSettingsSource
from pydantic_settings import SettingsConfigDict
from pydantic_settings import TomlConfigSettingsSource

from relay_core.google_oauth import GeminiConfig
from relay_core.health import HealthRules
from relay_core.oauth import OAuthConfig

CONFIG_FILE_ENV = "RELAY_CONFIG"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "claude-relay"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_", env_nested_delimiter="__", extra="ignore")

    listen: str = Field("127.0.0.1:8080", description="host:port the relay listens on")
    workers: int = Field(1, ge=1, le=256, description="relay processes sharing the listening port (SO_REUSEPORT)")
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate (intermediates after it) the listener serves over HTTPS; with tls_key."
        " Unset: TLS clients get one from mitmproxy's own CA in data_dir/mitmproxy",
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert, without a passphrase")
    # First-party mode (relay_core/forward.py): a second listener in forward-proxy mode, for HTTPS_PROXY.
    forward_listen: str | None = Field(
        None,
        description="host:port of the forward-proxy listener (clients set HTTPS_PROXY to it and trust the relay's"
        " CA, `relay ca`); unset: no such listener",
    )
    forward_intercept_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["api.anthropic.com"],
        description="hosts whose CONNECT (port 443) the forward listener intercepts with the relay's CA and relays"
        " like base-URL requests (comma-separated in the environment)",
    )
    forward_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host or host:port (port 443 when left out) the forward listener tunnels untouched, for a"
        " CONNECT carrying a valid team key in Proxy-Authorization; every other host is refused (403)",
    )
    redis_url: str | None = Field(
        None,
        description="Redis/Valkey URL (redis://, rediss://, unix://; a cluster: redis+cluster://host:port[,host:port...]"
        " or rediss+cluster://); unset starts the embedded Valkey",
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="secret key and embedded store")
    secret_key: str | None = Field(None, description="server secret; unset: generated into data_dir")
    key_prefix: str = Field("relay", description="prefix (hash tag) of every Redis key")
    upstream_url: str = Field("https://api.anthropic.com", description="default upstream base URL")

    anthropic_version: str = "2023-06-01"
    oauth_beta: str = "oauth-2025-04-20"
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="largest request body accepted (413 above)")
    drain_timeout_s: int = Field(
        120, ge=0, description="on SIGTERM, how long running requests may take to finish before the relay exits"
    )
    usage_retention_days: int = Field(400, ge=1, description="usage buckets expire after this many days")
    timezone: str = Field("UTC", description="time zone of usage days and limit windows")
    store_timeout_ms: int = Field(
        1000, description="longest wait for a store connection, and then for its answer, on the hot path"
    )
    store_max_connections: int = Field(
        200, ge=1, description="store connections per relay process; calls beyond wait for a free one"
    )
    # The rate lock (user-message queue). These four keep their historical names without the RELAY_ prefix.
    user_message_queue_enabled: bool = Field(
        True,
        validation_alias=AliasChoices("USER_MESSAGE_QUEUE_ENABLED", "user_message_queue_enabled"),
        description="send one human turn at a time per OAuth account (an account setting may override)",
    )
    user_message_queue_delay_ms: int = Field(
        200,
        ge=0,
        validation_alias=AliasChoices("USER_MESSAGE_QUEUE_DELAY_MS", "user_message_queue_delay_ms"),
        description="minimum gap between one human turn's response headers and the next turn's start",
    )
    user_message_queue_timeout_ms: int = Field(
        5000,
        ge=0,
        validation_alias=AliasChoices("USER_MESSAGE_QUEUE_TIMEOUT_MS", "user_message_queue_timeout_ms"),
        description="longest wait for the lock; then 529 overloaded_error so the client retries",
    )
    user_message_queue_lock_ttl_ms: int = Field(
        5000,
        ge=100,
        validation_alias=AliasChoices("USER_MESSAGE_QUEUE_LOCK_TTL_MS", "user_message_queue_lock_ttl_ms"),
        description="a lock whose owner never saw response headers (died, hung) frees itself after this",
    )
    # Time and connection bounds (addons/connection_cap.py, client_timeouts.py, upstream_timeouts.py).
    client_header_timeout_s: int = Field(
        30, ge=1, description="a new client connection that has not sent complete request headers by then is closed"
    )
    client_idle_timeout_s: int = Field(
        120,
        ge=1,
        description="a kept-alive client connection whose next request's headers are not complete this long after"
        " its last answer is closed",
    )
    max_connections_per_client: int = Field(
        512,
        ge=0,
        description="open connections per client address (the TCP peer's: behind a balancer, the balancer's) per"
        " relay process; more are refused at once; 0: no cap",
    )
    upstream_connect_timeout_s: int = Field(
        10, ge=1, description="longest wait for the upstream (or the account's proxy) to accept a connection; then 504"
    )
    upstream_first_byte_timeout_s: int = Field(
        600,
        ge=1,
        description="longest wait from sending a request until the upstream's response headers (long thinking"
        " included); then 504 timeout_error",
    )
    upstream_stream_idle_timeout_s: int = Field(
        300,
        ge=1,
        description="longest gap between an answer's chunks (a buffered answer: its whole body); then the stream"
        " ends with an SSE timeout_error event (before it began: 504)",
    )
    sticky_session_ttl_s: int = Field(3600, ge=1, description="a conversation stays on its account this long")
    failover_max_switches: int = Field(
        3,
        ge=0,
        description="accounts a request may move on to when one fails before its answer began (0: none; "
        "then the client is told to retry)",
    )
    overload_cooldown_s: int = Field(60, ge=0, description="an account that answered 529 rests this long")
    failure_streak: int = Field(3, ge=1, description="consecutive 5xx answers before an account rests")
    failure_cooldown_s: int = Field(60, ge=0, description="how long an account rests after such a streak")
    api_key_429_cooldown_s: int = Field(60, ge=0, description="rest for an API key's 429 without retry-after")
    max_cooldown_s: int = Field(7 * 86400, ge=1, description="no cooldown lasts longer, whatever a header says")
    warning_utilization: float = Field(
        0.9, ge=0, le=1, description="a subscription window this full (0-1) makes the account a last choice"
    )
    oauth: OAuthConfig = Field(
        default_factory=OAuthConfig, description="subscription OAuth endpoints (RELAY_OAUTH__TOKEN_URL, ...)"
    )
    gemini: GeminiConfig = Field(
        default_factory=GeminiConfig, description="Google upstreams for Gemini CLI (RELAY_GEMINI__API_URL, ...)"
    )
    signin_warning_days: int = Field(
        14, ge=0, description="warn (log, doctor) this many days before an account's OAuth sign-in ends"
    )
    overage_cooldown_s: int = Field(
        3600, ge=1, description="rest for an account found spending extra usage when its answer names no reset"
    )
    refresh_margin_s: int = Field(300, ge=0, description="refresh an access token this long before it expires")
    refresh_interval_s: int = Field(60, ge=1, description="how often each relay looks for tokens due a refresh")
    refresh_lock_ttl_s: int = Field(30, ge=1, description="a refresh whose relay died frees its lock after this")
    quota_poll_interval_s: int = Field(
        300,
        ge=0,
        description="how often each subscription account's quota is read from the usage endpoint (one relay"
        " polls each account per interval); 0: never",
    )
    lease_ttl_ms: int = Field(
        4000,
        ge=1000,
        description="leases and budget reservations of a relay that died expire after this; live ones are renewed",
    )
    metrics_token: str | None = Field(
        None,
        min_length=1,
        pattern=r"\S",
        description="bearer token GET /metrics requires; unset: only clients on this machine may scrape",
    )
    request_log: str = Field("text", pattern="^(text|json|off)$", description="one line per request: text, json or off")
    web_listen: str = Field("127.0.0.1:8081", description="host:port of the `relay web` UI (mitmweb, plain HTTP)")
    web_password: str | None = Field(
        None, min_length=1, description="`relay web` UI password or argon2 hash; unset: a token printed at start"
    )
    web_max_flows: int = Field(1000, ge=1, description="most flows `relay web` keeps (redacted copies, oldest go)")
    web_max_body_bytes: int = Field(
        32768, ge=0, description="most bytes of each request/response body a `relay web` flow keeps"
    )
    # Alerts (relay_core/events.py, relay_core/alerts.py; webhooks: `relay alerts add`).
    alerts_signin_warning_days: int = Field(
        7, ge=0, description="send account.signin_ending this many days before an account's OAuth sign-in ends"
    )
    alerts_check_interval_s: int = Field(
        3600, ge=1, description="how often each relay looks for sign-ins ending (the alert goes once per sign-in)"
    )
    alerts_queue_size: int = Field(
        1000, ge=1, description="events waiting to be sent per relay process; beyond, new ones are dropped (logged)"
    )
    alerts_attempts: int = Field(3, ge=1, le=10, description="attempts to deliver one alert to one webhook")
    alerts_retry_base_s: float = Field(
        1.0, ge=0, description="wait before the second attempt; each later one waits 4 times longer (capped)"
    )
    alerts_retry_max_s: float = Field(30.0, ge=0, description="longest wait between two attempts")
    alerts_timeout_s: float = Field(5.0, gt=0, description="longest wait for a webhook's answer, per attempt")
    alerts_store_unreachable_interval_s: int = Field(
        300, ge=1, description="at most one store.unreachable alert per relay process this often"
    )
    page_session_ttl_s: int = Field(
        12 * 3600, ge=60, description="a sign-in on the /relay/ page lasts this long (its cookie's Max-Age)"
    )
    page_sign_ins_per_minute: int = Field(
        10, ge=1, description="sign-in attempts on the /relay/ page one client address may make per minute (429 above)"
    )
    price_overrides: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="USD per million tokens for models genai-prices does not know: "
        "{model: {input, output, cache_read, cache_write_5m, cache_write_1h}}",
    )

    @field_validator("listen", "web_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"listen must be host:port, got {value!r}")
        return value

    @field_validator("forward_listen")
    @classmethod
    def _check_forward_listen(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else cls._check_listen(value.strip())

    @field_validator("forward_intercept_hosts", "forward_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """A list (TOML), or in the environment a comma-separated string (a JSON list works too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("forward_intercept_hosts", "forward_allow_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        from relay_core.forward import parse_host_port  # relay_core.forward imports these settings

        for entry in value:
            parse_host_port(entry)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return value

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.forward_listen is not None and self.forward_port and self.forward_port == self.listen_port:
            raise ValueError("forward_listen needs a port of its own, not the listen port")
        return self

    @property
    def health_rules(self) -> HealthRules:
        return HealthRules(
            overload_cooldown_s=self.overload_cooldown_s,
            failure_streak=self.failure_streak,
            failure_cooldown_s=self.failure_cooldown_s,
            api_key_429_cooldown_s=self.api_key_429_cooldown_s,
            max_cooldown_s=self.max_cooldown_s,
            overage_cooldown_s=self.overage_cooldown_s,
        )

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def forward_host(self) -> str:
        assert self.forward_listen is not None
        return self.forward_listen.rpartition(":")[0].strip("[]")

    @property
    def forward_port(self) -> int:
        assert self.forward_listen is not None
        return int(self.forward_listen.rpartition(":")[2])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            toml_source = TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file))
            check_setting_names(toml_source.toml_data, config_file)
            sources.append(toml_source)
        return tuple(sources)


_TABLES: dict[str, type[BaseModel]] = {"oauth": OAuthConfig}  # nested settings whose keys are checked too


def check_setting_names(data: Mapping[str, Any], where: str) -> None:
    """A misspelt setting is an error, not a silent default (`metrics_tokn` would leave /metrics open)."""
    for name, value in data.items():
        if name not in Settings.model_fields:
            raise ValueError(f"{where}: unknown setting {name!r}{_closest(name, Settings.model_fields)}")
        table = _TABLES.get(name)
        if table is not None and isinstance(value, Mapping):
            for inner in value:
                if inner not in table.model_fields:
                    raise ValueError(f"{where}: unknown setting {name}.{inner!r}{_closest(inner, table.model_fields)}")


def settings_error_text(exc: ValidationError) -> str:
    """One line per bad setting, naming it, instead of pydantic's multi-line report."""
    return "; ".join(
        (f"setting {'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "settings: ")
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )


def _closest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""
