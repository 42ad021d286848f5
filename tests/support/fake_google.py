"""A fake Google upstream for Gemini traffic: the FakeUpstream server, answering like Google on loopback.

It speaks the two APIs the Gemini CLI can be pointed at (the gemini-cli reference, gemini-cli.md, and its
capture of one headless 0.61.0 turn per method, which the requests here were checked against):

- Code Assist (what "Login with Google" uses, cloudcode-pa.googleapis.com): `POST /v1internal:{method}`
  with `Authorization: Bearer <access token>`. Answers are wrapped as `{"traceId", "response": {...}}`.
- Gemini API (generativelanguage.googleapis.com): `/v1beta/models/{model}:{method}` with
  `x-goog-api-key`. Answers are the plain GenerateContentResponse, usageMetadata at the top level.

and Google's OAuth token endpoint (`POST /token`, refresh-token grant), so a relay refreshing an account's
access token can be pointed here too. Every call lands in `requests` (and `sent`) like FakeUpstream's.

Credentials are checked the way Google does, so a relay that forwards the wrong one is caught:
`tokens` maps the access tokens Code Assist accepts to their Cloud project, `api_keys` holds the keys the
Gemini API accepts, `refresh_tokens` maps a refresh token to the access token a refresh hands out.

Streams follow what Google's clients parse: one `data: <single-line JSON>` per event, each ended by a blank
line. The capture holds no answers, so the line ends are Google's usual `\\r\\n\\r\\n`; both readers take it
(the CLI's Code Assist reader splits on any line end, the genai SDK wants `\\n\\n`, `\\r\\r` or `\\r\\n\\r\\n`).
Usage is cumulative: middle chunks carry only promptTokenCount and a running totalTokenCount, the last one
`usage` whole with `finishReason: "STOP"`. Summing chunks, or billing a middle one, gives wrong numbers.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC
from datetime import datetime
from typing import Any

from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen

DEFAULT_TEXT = "Hello from the fake Google!"
DEFAULT_PROJECT = "fake-project-1"  # the project of an access token that a refresh registered
SSE_END = "\r\n\r\n"
JSON_TYPE = "application/json; charset=UTF-8"
OAUTH_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email"
    " https://www.googleapis.com/auth/userinfo.profile openid"
)
MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-3-pro-preview")
CODE_ASSIST_DOMAIN = "cloudcode-pa.googleapis.com"
TYPE = "type.googleapis.com/google.rpc."


def usage_metadata(prompt: int, candidates: int, thoughts: int = 0, cached: int = 0) -> dict[str, Any]:
    """A final usageMetadata as Google reports it: promptTokenCount includes the cached tokens,
    candidatesTokenCount excludes the thoughts, totalTokenCount adds all three up."""
    used: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        used["cachedContentTokenCount"] = cached
        used["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        used["thoughtsTokenCount"] = thoughts
    return used


# Distinct, non-round numbers with every field a bill needs (prompt incl. cached, candidates, thoughts).
DEFAULT_USAGE = usage_metadata(prompt=1234, candidates=56, thoughts=78, cached=1000)


def google_error(code: int, status: str, message: str, details: Sequence[dict[str, Any]] = ()) -> Reply:
    """Google's error answer: `{"error": {code, message, status, details?}}` with that HTTP status."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return Reply(status=code, headers={"content-type": JSON_TYPE}, body=json.dumps({"error": error}).encode())


def _duration(seconds: float) -> str:
    """A protobuf Duration as JSON carries it: "26s", "0.5s", "31447.25s"."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _go_duration(seconds: float) -> str:
    """The human form in Code Assist's quota message, Go style: "8h44m7s", "2m5s", "9s"."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def quota_exhausted(model: str, reset_s: float) -> Reply:
    """Code Assist's 429 for an account whose quota on `model` is used up until `reset_s` from now.

    The message says "exhausted your capacity", which the CLI (0.61.0) treats as capacity trouble: two
    silent retries, each after the RetryInfo delay, then it gives up (headless, explicit model: exit 1).
    A long reset therefore keeps a client asleep for hours; tests use a short one.
    """
    reset_at = datetime.fromtimestamp(time.time() + reset_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return google_error(
        429,
        "RESOURCE_EXHAUSTED",
        f"You have exhausted your capacity on this model. Your quota will reset after {_go_duration(reset_s)}.",
        [
            {
                "@type": TYPE + "ErrorInfo",
                "reason": "QUOTA_EXHAUSTED",
                "domain": CODE_ASSIST_DOMAIN,
                "metadata": {
                    "uiMessage": "true",
                    "model": model,
                    "quotaResetDelay": _duration(reset_s),
                    "quotaResetTimeStamp": reset_at,
                },
            },
            {"@type": TYPE + "RetryInfo", "retryDelay": _duration(reset_s)},
        ],
    )


def api_quota_exceeded(model: str, retry_s: float, *, daily: bool = False, limit: int = 2) -> Reply:
    """The Gemini API's 429 for a key over its free-tier requests on `model` (per minute, or per day).

    The CLI (0.61.0) backs off from a per-minute one: 5 s doubling to 30 s (never less than the RetryInfo
    delay), up to 10 attempts, so minutes. A PerDay quotaId, or `limit=0`, ends a headless run at once.
    """
    period = "PerDay" if daily else "PerMinute"
    metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    return google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more information on"
        " this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage,"
        f" head to: https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: {metric}, limit: {limit},"
        f" model: {model}\nPlease retry in {_duration(retry_s)}.",
        [
            {
                "@type": TYPE + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": metric,
                        "quotaId": f"GenerateRequests{period}PerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(limit),
                    }
                ],
            },
            {
                "@type": TYPE + "Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": TYPE + "RetryInfo", "retryDelay": _duration(retry_s)},
        ],
    )


UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid"
    " authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def _bad_api_key() -> Reply:
    return google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )


def _json(answer: Any, status: int = 200) -> Reply:
    return Reply(status=status, headers={"content-type": JSON_TYPE}, body=json.dumps(answer).encode())


class FakeGoogle(FakeUpstream):
    """Code Assist, the Gemini API and Google's token endpoint on one loopback server.

    Settable per test: `text` (the model's answer), `thought` (a thought summary streamed first; "" for
    none), `usage` (the final usageMetadata, see usage_metadata), `handler` (FakeUpstream's: answers
    everything itself, e.g. `lambda seen: quota_exhausted(...)`; `default_reply` is the fake's own answer
    to fall back on). `reset()` also forgets the credentials. The model is echoed as `modelVersion`;
    countTokens answers the usage's promptTokenCount.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, str] = {}  # Code Assist access token -> its Cloud project id
        self.api_keys: set[str] = set()  # Gemini API keys
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> the access token a refresh hands out
        self.auth_codes: dict[str, tuple[str, str]] = {}  # sign-in code -> (access token, refresh token)
        self._google_defaults()

    def _google_defaults(self) -> None:
        self.usage = dict(DEFAULT_USAGE)
        self.text = DEFAULT_TEXT
        self.thought = "**Answering the greeting**"

    def start(self) -> FakeGoogle:
        super().start()
        return self

    def reset(self) -> None:
        super().reset()
        self._google_defaults()
        self.tokens.clear()
        self.api_keys.clear()
        self.refresh_tokens.clear()
        self.auth_codes.clear()

    def calls(self) -> list[str]:
        """What reached the fake, in order, as "METHOD /path" without the query (e.g. the CLI's startup)."""
        with self._lock:
            return [f"{s.method} {s.path.split('?')[0]}" for s in self.requests]

    # --- routing ----------------------------------------------------------------------------------------

    def default_reply(self, seen: Seen) -> Reply:
        path, _, query = seen.path.partition("?")
        if path == "/token":
            return self._token(seen)
        if path.startswith("/v1internal"):
            project = self.tokens.get(seen.headers.get("authorization", "").removeprefix("Bearer "))
            if project is None or not seen.headers.get("authorization", "").startswith("Bearer "):
                return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED)
            return self._code_assist(seen, path, project, "alt=sse" in query.split("&"))
        if path.startswith("/v1beta/models"):
            key = seen.headers.get("x-goog-api-key")
            if key is None:
                if "authorization" in seen.headers:
                    return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED)
                return google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established identity)."
                    " Please use API Key or other form of API consumer identity to call this API.",
                )
            if key not in self.api_keys:
                return _bad_api_key()
            return self._gemini_api(seen, path, "alt=sse" in query.split("&"))
        return google_error(404, "NOT_FOUND", f"Requested entity was not found: {path}")

    def _code_assist(self, seen: Seen, path: str, project: str, sse: bool) -> Reply:
        method = path.removeprefix("/v1internal").removeprefix(":")
        if seen.method == "GET" and path.startswith("/v1internal/"):  # polling an onboarding operation
            return _json(self._onboarded(project, path.removeprefix("/v1internal/")))
        try:
            body = seen.json() if seen.body else {}
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if method == "loadCodeAssist":
            return _json({"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": project})
        if method == "onboardUser":
            return _json(self._onboarded(project, f"operations/onboard-{secrets.token_hex(6)}"))
        if method == "countTokens":
            return _json({"totalTokens": self.usage.get("promptTokenCount", 0)})
        if method in ("generateContent", "streamGenerateContent"):
            model = str(body.get("model", ""))
            trace = secrets.token_hex(8)
            if method == "generateContent":
                return _json({"traceId": trace, "response": self._final(model)})
            wrapped = [{"response": event, "traceId": trace} for event in self._events(model)]
            return self._stream(wrapped, sse)
        return _json({})  # retrieveUserQuota, listExperiments, recordCodeAssistMetrics, settings, ...

    def _gemini_api(self, seen: Seen, path: str, sse: bool) -> Reply:
        name, _, method = path.removeprefix("/v1beta/models").removeprefix("/").partition(":")
        if seen.method == "GET":
            if not name:
                return _json({"models": [self._model(m) for m in MODELS]})
            if name in MODELS:
                return _json(self._model(name))
            return google_error(404, "NOT_FOUND", f"models/{name} is not found for API version v1beta.")
        if method == "countTokens":
            return _json({"totalTokens": self.usage.get("promptTokenCount", 0)})
        if method == "generateContent":
            return _json(self._final(name))
        if method == "streamGenerateContent":
            return self._stream(self._events(name), sse)
        return google_error(404, "NOT_FOUND", f"Method not found: {method}")

    # --- answers ----------------------------------------------------------------------------------------

    @staticmethod
    def _onboarded(project: str, name: str) -> dict[str, Any]:
        response = {
            "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
            "cloudaicompanionProject": {"id": project, "name": project},
        }
        return {"name": name, "done": True, "response": response}

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "displayName": name,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "thinking": True,
        }

    def _final(self, model: str) -> dict[str, Any]:
        """A whole (non-streamed) GenerateContentResponse: the thought, the text, STOP and the usage."""
        parts: list[dict[str, Any]] = [{"text": self.thought, "thought": True}] if self.thought else []
        parts.append({"text": self.text})
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": dict(self.usage),
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(12),
        }

    def _events(self, model: str) -> list[dict[str, Any]]:
        """The stream's GenerateContentResponses: the thought, then the text a few words at a time; only
        the last carries finishReason STOP and the full usage."""
        prompt = self.usage.get("promptTokenCount", 0)
        running = {"promptTokenCount": prompt, "totalTokenCount": prompt + self.usage.get("thoughtsTokenCount", 0)}
        words = self.text.split(" ")
        pieces = [" ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]
        parts: list[dict[str, Any]] = [{"text": self.thought, "thought": True}] if self.thought else []
        parts += [{"text": piece} for piece in pieces]
        response_id = secrets.token_urlsafe(12)
        events = []
        for n, part in enumerate(parts):
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
            last = n == len(parts) - 1
            if last:
                candidate["finishReason"] = "STOP"
            events.append(
                {
                    "candidates": [candidate],
                    "usageMetadata": dict(self.usage) if last else dict(running),
                    "modelVersion": model,
                    "responseId": response_id,
                }
            )
        return events

    @staticmethod
    def _stream(events: list[dict[str, Any]], sse: bool) -> Reply:
        """SSE with `alt=sse`; without it Google streams one JSON array of the same objects."""
        if not sse:
            return _json(events)
        frames = [f"data: {json.dumps(event, separators=(',', ':'))}{SSE_END}".encode() for event in events]
        return Reply(headers={"content-type": "text/event-stream"}, chunks=frames)

    # --- OAuth --------------------------------------------------------------------------------------------

    def _token(self, seen: Seen) -> Reply:
        """Google's token endpoint: the refresh-token grant (what a relay keeping accounts fresh does) and the
        authorization-code grant of a sign-in (a code in `auth_codes`, once; PKCE's verifier is left to the
        test to check against the challenge of the sign-in URL)."""
        form = {k: v[0] for k, v in urllib.parse.parse_qs(seen.body.decode(errors="replace")).items()}
        if seen.method != "POST":
            return _json({"error": "invalid_request", "error_description": "Only POST is supported"}, 405)
        if not form.get("client_id") or not form.get("client_secret"):
            return _json(
                {"error": "invalid_request", "error_description": "Could not determine client ID from request."}, 400
            )
        if form.get("grant_type") == "authorization_code":
            issued = self.auth_codes.pop(form.get("code", ""), None)
            if issued is None or not form.get("code_verifier") or not form.get("redirect_uri"):
                return _json({"error": "invalid_grant", "error_description": "Bad Request"}, 400)
            access, refresh = issued
            self.tokens.setdefault(access, DEFAULT_PROJECT)
            self.refresh_tokens[refresh] = access
            answer = {"access_token": access, "refresh_token": refresh, "expires_in": 3599, "scope": OAUTH_SCOPES}
            return _json({**answer, "token_type": "Bearer"})
        if form.get("grant_type") != "refresh_token":
            return _json({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, 400)
        access = self.refresh_tokens.get(form.get("refresh_token", ""))
        if access is None:
            return _json({"error": "invalid_grant", "error_description": "Bad Request"}, 400)
        self.tokens.setdefault(access, DEFAULT_PROJECT)
        return _json({"access_token": access, "expires_in": 3599, "scope": OAUTH_SCOPES, "token_type": "Bearer"})
