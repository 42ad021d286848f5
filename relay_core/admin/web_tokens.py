"""Admin web tokens: signing in with one on the /relay/ page opens the team dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from relay_core.admin.errors import NotFoundError
from relay_core.runtime import Runtime
from relay_core.web.records import WebToken

HINT_LENGTH = 7


@dataclass(frozen=True)
class IssuedWebToken:
    """A token with its secret, which exists only here: the store keeps its keyed hash."""

    secret: str
    token: WebToken


class WebTokenAdmin:
    def __init__(self, runtime: Runtime) -> None:
        self.store = runtime.store
        self.keyring = runtime.keyring

    async def create(self, name: str) -> IssuedWebToken:
        secret = self.keyring.new_web_token()
        token = WebToken(name=name, token_hash=self.keyring.hash_web_secret(secret), hint=secret[:HINT_LENGTH])
        await self.store.create_web_token(token)
        return IssuedWebToken(secret, token)

    async def list_tokens(self) -> list[WebToken]:
        return await self.store.list_web_tokens()

    async def revoke(self, name: str) -> WebToken:
        """The token stops working at once: sessions opened with it are refused on their next view."""
        for token in await self.store.list_web_tokens():
            if token.name == name:
                await self.store.delete_web_token(token)
                return token
        raise NotFoundError(f"no web token named {name!r} (see `relay web-token list`)")
