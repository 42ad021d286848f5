"""A fake Claude OAuth server: a real HTTP/1.1 server on loopback speaking the token, profile and usage endpoints.

It keeps real state: authorization codes remember their PKCE challenge and are single-use, refresh tokens rotate
(the old one then answers 400 invalid_grant), so races between concurrent refreshes fail the way they do upstream.
A refresh may ask for a narrower `scope` (RFC 6749 §6): a scope the sign-in was not granted is refused with
invalid_scope, as is any `scope` at all while `refuse_refresh_scope` is set (public reports disagree on which
the real server does). Token answers carry `refresh_token_expires_in` when `signin_lifetime_s` is set.
It also serves as a plain HTTP forward proxy for http:// targets (absolute-form request lines), recording that
the request was proxied, so tests can check that an account's proxy is really used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

from relay_core.oauth import OAuthConfig

FULL_SCOPES = (
    "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
    " user:plugins user:privacy_consents:write"
)
REFRESH_SCOPES = "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload user:plugins"
CLIENT_ID = OAuthConfig().client_id
REDIRECT_URI = OAuthConfig().redirect_uri
INVALID_REFRESH = {"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}


@dataclass
class Seen:
    method: str
    path: str  # origin-form, even when the request came through the proxy
    headers: dict[str, str]
    body: bytes
    proxied: bool  # the request line carried an absolute URL: we were used as a forward proxy
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Grant:
    challenge: str
    state: str
    scope: str


@dataclass(frozen=True)
class _Signin:
    scope: str  # what the sign-in granted; a refresh may narrow an access token's scope, never the sign-in's
    ends_at: float | None  # epoch seconds; None: no end announced


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class FakeOAuth:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.refresh_calls = 0
        self.refresh_delay = 0.0  # seconds a refresh waits before it is decided: lets tests build races
        self.rotate_refresh_tokens = True  # False: a refresh answers without refresh_token and the old one stays
        self.fail_refresh = False  # True: every refresh answers fail_status / fail_body
        self.fail_status = 400
        self.fail_body: dict[str, Any] = {"error": "invalid_grant", "error_description": "Refresh token revoked"}
        self.expires_in = 28800
        # seconds a sign-in lasts, counted from the code exchange (or issue_tokens); refreshing does not move its end.
        # None: answers carry no refresh_token_expires_in.
        self.signin_lifetime_s: float | None = None
        self.refuse_refresh_scope = False  # True: a refresh that sends `scope` gets 400 invalid_scope
        self.refresh_bodies: list[dict[str, Any]] = []  # every refresh request's JSON body, in arrival order
        # GET /api/oauth/usage answers usage_status with usage_reply (None: a canned 24 % reading)
        self.usage_reply: dict[str, Any] | None = None
        self.usage_status = 200
        self.account = {"uuid": "acc-0001", "email_address": "owner@example.com"}
        self.organization = {"uuid": "org-0001", "name": "Example Org"}
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Signin] = {}  # refresh token -> the sign-in it belongs to
        self._access_tokens: dict[str, str] = {}  # access token -> scope
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # a short poll interval keeps stop() fast: tests start one server each
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeOAuth:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def config(self, **overrides: Any) -> OAuthConfig:
        """An OAuthConfig whose endpoints are this server's."""
        fields: dict[str, Any] = {
            "token_url": f"{self.url}/v1/oauth/token",
            "profile_url": f"{self.url}/api/oauth/profile",
            "usage_url": f"{self.url}/api/oauth/usage",
            "timeout_s": 5,
        }
        return OAuthConfig(**{**fields, **overrides})

    def authorize(self, challenge: str, state: str, scope: str = FULL_SCOPES) -> str:
        """The user's browser step: approve a login and get the code the callback page would show."""
        code = "code-" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Grant(challenge, state, scope)
        return code

    def issue_tokens(self, scope: str = FULL_SCOPES, with_refresh: bool = True) -> dict[str, Any]:
        """A token answer for an already-logged-in account, for tests that do not need the browser dance."""
        with self._lock:
            return self._issue(self._new_signin(scope), with_refresh, self.expires_in)

    def usage_calls(self, token: str | None = None) -> int:
        """GET /api/oauth/usage requests so far (with this bearer token, if given)."""
        with self._lock:
            return sum(
                1
                for seen in self.requests
                if seen.path.startswith("/api/oauth/usage")
                and (token is None or seen.headers.get("authorization") == f"Bearer {token}")
            )

    def reset_usage(self) -> None:
        self.usage_reply = None
        self.usage_status = 200

    def refresh_token_valid(self, token: str) -> bool:
        with self._lock:
            return token in self._refresh_tokens

    def _new_signin(self, scope: str) -> _Signin:
        lifetime = self.signin_lifetime_s
        return _Signin(scope, time.time() + lifetime if lifetime is not None else None)

    def _issue(self, signin: _Signin, with_refresh: bool, expires_in: int, scope: str | None = None) -> dict[str, Any]:
        access = "sk-ant-oat01-fake-" + secrets.token_urlsafe(24)
        scope = scope or signin.scope
        self._access_tokens[access] = scope
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": expires_in,
            "scope": scope,
            "organization": dict(self.organization),
            "account": dict(self.account),
        }
        if with_refresh:
            refresh = "sk-ant-ort01-fake-" + secrets.token_urlsafe(24)
            self._refresh_tokens[refresh] = signin
            answer["refresh_token"] = refresh
            if signin.ends_at is not None:
                answer["refresh_token_expires_in"] = max(0, int(signin.ends_at - time.time()))
        return answer

    def _token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("client_id") != CLIENT_ID:
            return 400, {"error": "invalid_client", "error_description": "Client authentication failed"}
        grant = body.get("grant_type")
        if grant == "authorization_code":
            return self._exchange(body)
        if grant == "refresh_token":
            return self._refresh(body)
        return 400, {"error": "unsupported_grant_type", "error_description": f"Unsupported grant type {grant!r}"}

    def _exchange(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            issued = self._codes.pop(str(body.get("code")), None)  # single use, even when the rest is wrong
            if issued is None:
                return 400, {"error": "invalid_grant", "error_description": "Invalid 'code' in request."}
            if body.get("redirect_uri") != REDIRECT_URI:
                return 400, {"error": "invalid_grant", "error_description": "Invalid 'redirect_uri' in request."}
            if body.get("state") != issued.state:
                return 400, {"error": "invalid_grant", "error_description": "Invalid 'state' in request."}
            if _challenge(str(body.get("code_verifier", ""))) != issued.challenge:
                return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}
            signin = self._new_signin(issued.scope)
            if "expires_in" in body:  # setup token: long-lived, no refresh token
                return 200, self._issue(signin, with_refresh=False, expires_in=int(body["expires_in"]))
            return 200, self._issue(signin, with_refresh=True, expires_in=self.expires_in)

    def _refresh(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.refresh_calls += 1
            self.refresh_bodies.append(body)
        if self.refresh_delay:
            time.sleep(self.refresh_delay)
        if self.fail_refresh:
            return self.fail_status, self.fail_body
        token = str(body.get("refresh_token"))
        with self._lock:
            signin = self._refresh_tokens.get(token)
            if signin is None:
                return 400, INVALID_REFRESH
            if signin.ends_at is not None and signin.ends_at <= time.time():
                del self._refresh_tokens[token]
                return 400, INVALID_REFRESH
            asked = body.get("scope")
            if asked is not None and (
                self.refuse_refresh_scope
                or not isinstance(asked, str)
                or not set(asked.split()) <= set(signin.scope.split())
            ):
                return 400, {"error": "invalid_scope", "error_description": "The requested scope is invalid"}
            scope = " ".join(asked.split()) if asked else None
            if not self.rotate_refresh_tokens:
                answer = self._issue(signin, with_refresh=False, expires_in=self.expires_in, scope=scope)
                if signin.ends_at is not None:
                    answer["refresh_token_expires_in"] = max(0, int(signin.ends_at - time.time()))
                return 200, answer
            del self._refresh_tokens[token]
            return 200, self._issue(signin, with_refresh=True, expires_in=self.expires_in, scope=scope)

    def _api(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        bearer = seen.headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            scope = self._access_tokens.get(bearer)
        if scope is None:
            return 401, _anthropic_error("authentication_error", "Invalid bearer token")
        if seen.path.startswith("/api/oauth/profile"):
            if "user:profile" not in scope.split():
                return 403, _anthropic_error("permission_error", "OAuth token does not meet scope requirement")
            return 200, {
                "account": {"uuid": self.account["uuid"], "email": self.account["email_address"]},
                "organization": {**self.organization, "organization_type": "claude_max"},
            }
        if "oauth-2025-04-20" not in seen.headers.get("anthropic-beta", ""):
            return 401, _anthropic_error("authentication_error", "OAuth authentication is currently not supported.")
        if self.usage_reply is not None or self.usage_status != 200:
            return self.usage_status, dict(self.usage_reply or {})
        window = {"utilization": 24.0, "resets_at": "2026-01-02T19:59:59.600956+00:00"}
        return 200, {"five_hour": window, "seven_day": window, "seven_day_opus": None, "seven_day_sonnet": None}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                target = urllib.parse.urlsplit(self.path)
                proxied = bool(target.scheme)
                path = target.path + (f"?{target.query}" if target.query else "")
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(
                    self.command,
                    path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                    proxied,
                )
                with fake._lock:
                    fake.requests.append(seen)
                if self.command == "POST" and target.path == "/v1/oauth/token":
                    try:
                        status, answer = fake._token(seen.json())
                    except ValueError:
                        status, answer = 400, {"error": "invalid_request", "error_description": "Body is not JSON"}
                elif self.command == "GET" and target.path in ("/api/oauth/profile", "/api/oauth/usage"):
                    status, answer = fake._api(seen)
                else:
                    status, answer = 404, _anthropic_error("not_found_error", "Not Found")
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

        return Handler
