"""The Gemini requests the relay serves under `/gemini`, and which account kind serves each.

Code Assist's set-up calls (loadCodeAssist, onboardUser, quota and experiments) are answered by the relay:
the project a client is told about is a placeholder, as every generate call is sent with the project of
the account that serves it. Any other `v1internal` method gets `{}` rather than a 404 the CLI cannot use.
"""

from __future__ import annotations

import re
from enum import StrEnum

from relay_core.models import AccountKind

PREFIX = "/gemini"
_API_CALL = re.compile(r"/gemini/(v1beta|v1|v1alpha)/models/([^/:]+):([A-Za-z]+)")
_API_MODELS = re.compile(r"/gemini/(v1beta|v1|v1alpha)/models(/[^/:]+)?")
_CODE_ASSIST_CALL = re.compile(r"/gemini/v1internal:([A-Za-z]+)")


class GeminiRoute(StrEnum):
    GENERATE = "gemini_generate"  # Gemini API: models/{model}:generateContent or :streamGenerateContent
    COUNT_TOKENS = "gemini_count_tokens"
    MODELS = "gemini_models"
    ASSIST_GENERATE = "code_assist_generate"  # v1internal:generateContent or :streamGenerateContent
    ASSIST_COUNT_TOKENS = "code_assist_count_tokens"
    ASSIST_LOAD = "code_assist_load"  # answered by the relay
    ASSIST_ONBOARD = "code_assist_onboard"  # answered by the relay
    ASSIST_OTHER = "code_assist_other"  # answered by the relay: `{}`

    @property
    def is_relayed(self) -> bool:
        return self in _RELAYED

    @property
    def is_metered(self) -> bool:
        return self in (GeminiRoute.GENERATE, GeminiRoute.ASSIST_GENERATE)

    @property
    def reads_body(self) -> bool:
        return self in (
            GeminiRoute.GENERATE,
            GeminiRoute.COUNT_TOKENS,
            GeminiRoute.ASSIST_GENERATE,
            GeminiRoute.ASSIST_COUNT_TOKENS,
        )

    @property
    def is_code_assist(self) -> bool:
        return self.value.startswith("code_assist")

    @property
    def account_kind(self) -> AccountKind:
        """Each method is served by its own kind of account (no translation between the two APIs)."""
        return AccountKind.GEMINI_OAUTH if self.is_code_assist else AccountKind.GEMINI_API_KEY


_RELAYED = frozenset(
    {
        GeminiRoute.GENERATE,
        GeminiRoute.COUNT_TOKENS,
        GeminiRoute.MODELS,
        GeminiRoute.ASSIST_GENERATE,
        GeminiRoute.ASSIST_COUNT_TOKENS,
    }
)
_API_ACTIONS = {
    "generateContent": GeminiRoute.GENERATE,
    "streamGenerateContent": GeminiRoute.GENERATE,
    "countTokens": GeminiRoute.COUNT_TOKENS,
}
_ASSIST_METHODS = {
    "generateContent": GeminiRoute.ASSIST_GENERATE,
    "streamGenerateContent": GeminiRoute.ASSIST_GENERATE,
    "countTokens": GeminiRoute.ASSIST_COUNT_TOKENS,
    "loadCodeAssist": GeminiRoute.ASSIST_LOAD,
    "onboardUser": GeminiRoute.ASSIST_ONBOARD,
}


def classify(method: str, path: str) -> GeminiRoute | None:
    """Route of a request line (`path` as `ApiProtocol.classify` gets it: no query, no trailing `/`)."""
    if not path.startswith(PREFIX + "/"):
        return None
    if method == "POST":
        if match := _API_CALL.fullmatch(path):
            return _API_ACTIONS.get(match.group(3))
        if match := _CODE_ASSIST_CALL.fullmatch(path):
            return _ASSIST_METHODS.get(match.group(1), GeminiRoute.ASSIST_OTHER)
    elif method == "GET":
        if _API_MODELS.fullmatch(path):
            return GeminiRoute.MODELS
        if path.startswith(PREFIX + "/v1internal"):  # long-running operations polled by the CLI
            return GeminiRoute.ASSIST_OTHER
    return None


def api_model(path: str) -> str | None:
    """The model a Gemini API call names in its path."""
    match = _API_CALL.fullmatch(path.split("?", 1)[0])
    return match.group(2) if match else None


def is_stream_call(path: str) -> bool:
    return ":streamGenerateContent" in path.split("?", 1)[0]
