"""Auth scheme ``api-key``: keys created by ``omniroute keys create`` or ``/api/keys``.

The key arrives as ``Authorization: Bearer <key>``, ``x-api-key``,
``x-goog-api-key`` or ``?key=``.
Only SHA-256 hashes are stored; the presented key is hashed, looked up, and
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from omniroute.auth.base import AuthScheme, Principal
from omniroute.config import Config
from omniroute.errors import AuthenticationFailed
from omniroute.hookspecs import hookimpl
from omniroute.storage.store import ApiKey, Store, hash_secret


def presented_key(request: web.Request) -> str | None:
    """The API key a request carries, from whichever place its client uses.

    ``Authorization: Bearer`` (OpenAI, and Anthropic SDKs lately), ``x-api-key``
    (Anthropic), ``x-goog-api-key`` or ``?key=`` (Gemini). Any of them, on
    every route: a client is not refused for sending its key its own way.
    """
    headers = request.headers
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    found = headers.get("x-api-key") or headers.get("x-goog-api-key")
    if found is None and not request.path.startswith("/api/"):
        found = request.query.get("key")  # Gemini clients; never for the management API
    return found or None


class KeyIndex:
    """Active keys by hash, rebuilt from the database on every config reload."""

    def __init__(self, keys: list[ApiKey] = ()) -> None:  # type: ignore[assignment]
        self._by_hash = {k.key_hash: k for k in keys if k.revoked_at is None}

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            return None
        return key

    def revoke(self, key_id: str) -> None:
        self._by_hash = {h: k for h, k in self._by_hash.items() if k.id != key_id}

    def add(self, key: ApiKey) -> None:
        self._by_hash[key.key_hash] = key


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
        key = self.keys.find(secret)
        if key is None:
            raise AuthenticationFailed("Invalid API key.")
        return Principal("api_key", key.id, key.scopes)


@hookimpl
def register_auth_schemes(register: Callable[[type[AuthScheme]], None]) -> None:
    register(ApiKeyScheme)
