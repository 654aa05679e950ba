"""What a cache backend is: an async byte store with expiry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class CacheBackend:
    """Base class of cache backend types; the configuration creates instances.

    Keys are strings, values bytes. Every method is async so that a backend
    may live in another process (Redis) without changing its callers.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` in seconds (None: the backend's default)."""
        raise NotImplementedError

    async def delete(self, key: str) -> bool:
        raise NotImplementedError

    async def clear(self) -> None:
        raise NotImplementedError

    async def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        """Release connections or files the backend holds."""
