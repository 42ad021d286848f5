"""The headers of every page answer: a CSP without any script, no framing, no caching, no referrer."""

from __future__ import annotations

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
HTML = "text/html; charset=utf-8"
CSS = "text/css; charset=utf-8"


def page_headers(content_type: str = HTML, **extra: str) -> dict[str, str]:
    """`extra`: more headers by their Python names (set_cookie=... is Set-Cookie)."""
    return {"content-type": content_type, **SECURITY_HEADERS, **{k.replace("_", "-"): v for k, v in extra.items()}}


def session_cookie(name: str, value: str, max_age_s: int, secure: bool) -> str:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's form or link sends it), only under /relay."""
    flags = "; Secure" if secure else ""
    return f"{name}={value}; Max-Age={max_age_s}; Path=/relay; HttpOnly; SameSite=Strict{flags}"


def cleared_cookie(name: str, secure: bool) -> str:
    return session_cookie(name, "", 0, secure)
