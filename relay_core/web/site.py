"""The page's requests and answers, free of the proxy: addons/web_page.py turns a flow into a
PageRequest and the PageAnswer back into a response.

Only sign-in and sign-out change anything (a session); every other path only reads. Secrets arrive
only in a POSTed form body, never in a URL, and leave in no answer and no log line.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from dataclasses import field
from importlib.resources import files
from urllib.parse import parse_qs

from relay_core.runtime import Runtime
from relay_core.store import StoreError
from relay_core.web.access import COOKIE_NAME
from relay_core.web.access import PageAccess
from relay_core.web.access import Refusal
from relay_core.web.access import SignedIn
from relay_core.web.access import Visitor
from relay_core.web.headers import CSS
from relay_core.web.headers import cleared_cookie
from relay_core.web.headers import page_headers
from relay_core.web.headers import session_cookie
from relay_core.web.pages import key_page_html
from relay_core.web.pages import message_page
from relay_core.web.pages import sign_in_page
from relay_core.web.pages import team_page_html
from relay_core.web.records import Viewer
from relay_core.web.views import key_page
from relay_core.web.views import team_page

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096
HOME = "/relay/"
KEY_VIEW = "/relay/me"
TEAM_VIEW = "/relay/team"
STYLESHEET_PATH = "/relay/static/page.css"


@dataclass(frozen=True)
class PageRequest:
    method: str
    path: str  # without the query
    query: dict[str, str] = field(default_factory=dict)
    cookie: str | None = None  # the session cookie's value
    form: bytes = b""
    client: str = "unknown"  # the client's address, for the sign-in rate limit
    secure: bool = False  # reached over https: the cookie gets Secure


@dataclass(frozen=True)
class PageAnswer:
    status: int
    body: bytes
    headers: dict[str, str]


@functools.cache
def stylesheet() -> bytes:
    return files(__package__).joinpath("static/page.css").read_bytes()


def html(status: int, document: str, **headers: str) -> PageAnswer:
    return PageAnswer(status, document.encode(), page_headers(**headers))


def see_other(location: str, **headers: str) -> PageAnswer:
    return PageAnswer(303, b"", page_headers(location=location, **headers))


def home_of(visitor: Visitor) -> str:
    return TEAM_VIEW if visitor.viewer is Viewer.ADMIN else KEY_VIEW


class Site:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.access = PageAccess(runtime)

    async def answer(self, request: PageRequest) -> PageAnswer:
        try:
            return await self._answer(request)
        except StoreError as exc:
            logger.warning("page %s %s: store unavailable: %s", request.method, request.path, exc)
            return html(503, message_page("Unavailable", "The relay cannot reach its store right now; try again soon."))

    async def _answer(self, request: PageRequest) -> PageAnswer:
        path = request.path.rstrip("/") or "/"
        match request.method, path:
            case "GET", "/relay/static/page.css":
                return PageAnswer(200, stylesheet(), page_headers(CSS))
            case "GET", "/relay":
                visitor = await self.access.visitor(request.cookie)
                return see_other(home_of(visitor)) if visitor else html(200, sign_in_page())
            case "POST", "/relay/sign-in":
                return await self._sign_in(request)
            case "POST", "/relay/sign-out":
                await self.access.sign_out(request.cookie)
                return see_other(HOME, set_cookie=cleared_cookie(COOKIE_NAME, request.secure))
            case "GET", "/relay/me":
                return await self._key_view(request)
            case "GET", "/relay/team":
                return await self._team_view(request)
        return html(404, message_page("Not found", "The page has no such address."))

    async def _sign_in(self, request: PageRequest) -> PageAnswer:
        if len(request.form) > MAX_FORM_BYTES:
            return html(413, sign_in_page("That form was too large."))
        values = parse_qs(request.form.decode("utf-8", "replace"), max_num_fields=4)
        secret = (values.get("secret") or [""])[0]
        outcome = await self.access.sign_in(secret, request.client)
        if outcome is Refusal.TOO_MANY:
            return html(
                429, sign_in_page("Too many sign-in attempts from your address; wait a minute."), retry_after="60"
            )
        if not isinstance(outcome, SignedIn):
            return html(401, sign_in_page("That key or token cannot sign in: it is wrong, disabled or expired."))
        cookie = session_cookie(
            COOKIE_NAME, outcome.session_id, self.runtime.settings.page_session_ttl_s, request.secure
        )
        return see_other(home_of(outcome.visitor), set_cookie=cookie)

    async def _key_view(self, request: PageRequest) -> PageAnswer:
        visitor = await self.access.visitor(request.cookie)
        if visitor is None:
            return see_other(HOME)
        if visitor.key is None:
            return see_other(TEAM_VIEW)
        return html(200, key_page_html(await key_page(self.runtime, visitor.key)))

    async def _team_view(self, request: PageRequest) -> PageAnswer:
        visitor = await self.access.visitor(request.cookie)
        if visitor is None:
            return see_other(HOME)
        if visitor.viewer is not Viewer.ADMIN:
            return html(403, message_page("Team dashboard", "The team dashboard needs an admin's web token."))
        return html(200, team_page_html(await team_page(self.runtime, request.query.get("sort", "name"))))
