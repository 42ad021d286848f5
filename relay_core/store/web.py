"""The web page's state: admin web tokens (hashed), signed-in sessions (by hashed id, with a TTL) and
sign-in attempts per client address."""

from __future__ import annotations

from relay_core.store.client import NameTakenError
from relay_core.store.client import StoreClient
from relay_core.web.records import WebSession
from relay_core.web.records import WebToken

_CREATE = ("create",)
_HDEL_EACH = ("hdel_each",)
_COUNT_ATTEMPT = ("count_attempt",)


class WebAccess(StoreClient):
    async def create_web_token(self, token: WebToken) -> None:
        created = await self._run(
            _CREATE,
            keys=[self.k_web_token_names, self.k_web_tokens, self.k_web_token_hashes],
            args=[token.name, token.id, token.model_dump_json(), token.token_hash],
        )
        if not created:
            raise NameTakenError(f"a web token named {token.name!r} already exists")

    async def list_web_tokens(self) -> list[WebToken]:
        values = await self._call(self.redis.hvals(self.k_web_tokens))
        return sorted((WebToken.model_validate_json(v) for v in values), key=lambda t: t.name)

    async def web_token(self, token_id: str) -> WebToken | None:
        value = await self._call(self.redis.hget(self.k_web_tokens, token_id))
        return WebToken.model_validate_json(value) if value else None

    async def web_token_by_hash(self, token_hash: str) -> WebToken | None:
        token_id = await self._call(self.redis.hget(self.k_web_token_hashes, token_hash))
        return await self.web_token(token_id.decode()) if token_id else None

    async def delete_web_token(self, token: WebToken) -> None:
        await self._run(
            _HDEL_EACH,
            keys=[self.k_web_tokens, self.k_web_token_names, self.k_web_token_hashes],
            args=[token.id, token.name, token.token_hash],
        )

    async def save_web_session(self, session_hash: str, session: WebSession, ttl_s: int) -> None:
        await self._call(self.redis.set(self.web_session_key(session_hash), session.model_dump_json(), ex=ttl_s))

    async def web_session(self, session_hash: str) -> WebSession | None:
        value = await self._call(self.redis.get(self.web_session_key(session_hash)))
        return WebSession.model_validate_json(value) if value else None

    async def drop_web_session(self, session_hash: str) -> None:
        await self._call(self.redis.delete(self.web_session_key(session_hash)))

    async def count_sign_in(self, client: str, now: float) -> int:
        """This attempt and the others from `client` in the current minute."""
        counter = self.web_sign_in_counter(client, int(now) // 60)
        return int(await self._run(_COUNT_ATTEMPT, keys=[counter], args=[120]))
