"""Auth scheme ``api-key``: keys created by ``omniroute keys create`` or ``/api/keys``.

The key arrives as ``Authorization: Bearer <key>``, ``x-api-key``,
``x-goog-api-key`` or ``?key=``.
Only SHA-256 hashes are stored; the presented key is hashed, looked up, and
compared in constant time.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from aiohttp import hdrs, web
from multidict import istr

from omniroute.auth.base import AuthScheme, Principal
from omniroute.budgets.windows import iso
from omniroute.config import Config
from omniroute.errors import AuthenticationFailed
from omniroute.hookspecs import hookimpl
from omniroute.storage.store import ApiKey, Store, hash_secret

#: (``istr`` names: looked up without being case-folded on every request)
_X_API_KEY, _X_GOOG_API_KEY = istr("x-api-key"), istr("x-goog-api-key")


def presented_key(request: web.Request) -> str | None:
    """The API key a request carries, from whichever place its client uses.

    ``Authorization: Bearer`` (OpenAI, and Anthropic SDKs lately), ``x-api-key``
    (Anthropic), ``x-goog-api-key`` or ``?key=`` (Gemini). Any of them, on
    every route: a client is not refused for sending its key its own way.
    """
    headers = request.headers
    auth = headers.get(hdrs.AUTHORIZATION)
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    found = headers.get(_X_API_KEY) or headers.get(_X_GOOG_API_KEY)
    if found is None and not request.path.startswith("/api/"):
        found = request.query.get("key")  # Gemini clients; never for the management API
    return found or None


class KeyIndex:
    """Active keys by hash, rebuilt from the database on every config reload.

    Each key's :class:`Principal` (with its parsed limits and usage-record flag)
    is built here once, so a request reads them without a lookup.
    """

    def __init__(self, keys: list[ApiKey] = (),  # type: ignore[assignment]
                 clock: Callable[[], float] = time.time) -> None:
        """
        :param clock: wall time, for key expiry.
        """
        self.clock = clock
        self._by_hash = {k.key_hash: (k, _principal(k)) for k in keys if k.revoked_at is None}

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, secret: str) -> ApiKey | None:
        found = self._lookup(secret)
        return found[0] if found is not None else None

    def principal(self, secret: str) -> Principal:
        """Who presents ``secret``; :class:`AuthenticationFailed` for an unknown, revoked
        or expired key."""
        found = self._lookup(secret)
        if found is None:
            raise AuthenticationFailed("Invalid API key.")
        key, principal = found
        if key.expires_at is not None and key.expires_at <= self.clock():
            raise AuthenticationFailed(f"This API key expired at {iso(key.expires_at)}.",
                                       code="expired_api_key")
        return principal

    def _lookup(self, secret: str) -> tuple[ApiKey, Principal] | None:
        digest = hash_secret(secret)
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0].key_hash, digest):
            return None
        return found

    def revoke(self, key_id: str) -> None:
        self._by_hash = {h: e for h, e in self._by_hash.items() if e[0].id != key_id}

    def add(self, key: ApiKey) -> None:
        self._by_hash[key.key_hash] = (key, _principal(key))


def _principal(key: ApiKey) -> Principal:
    return Principal("api_key", key.id, key.scopes, log_usage=key.log_usage, limits=key.limits)


class ApiKeyScheme(AuthScheme):
    """API keys, looked up in an in-memory index of the active keys' hashes."""

    name = "api-key"

    def __init__(self, store: Store, config: Config) -> None:
        super().__init__(store, config)
        self.keys = KeyIndex()

    async def reload(self) -> None:
        self.keys = KeyIndex(await self.store.list_keys())

    async def authenticate(self, request: web.Request) -> Principal | None:
        secret = presented_key(request)
        if secret is None:
            return None
        return self.keys.principal(secret)


@hookimpl
def register_auth_schemes(register: Callable[[type[AuthScheme]], None]) -> None:
    register(ApiKeyScheme)
