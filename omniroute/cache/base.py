"""What a cache backend is: an async byte store with expiry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from omniroute.sharedstate import Pending, RequestBatch


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a backend, as the management API lists it."""

    key: str
    value: bytes
    #: times it answered a request
    hits: int
    #: seconds it has left
    expires_in: float


class CacheBackend:
    """Base class of cache backend types; the configuration creates instances.

    Keys are strings, values bytes. Every method is async so that a backend
    may live in another process (Redis) without changing its callers.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True: the backend is given an exact key as the process keeps it
    #: (:data:`~omniroute.cache.key.Exact`: a short text request's JSON array as bytes, or
    #: a hex name), and lists and deletes entries by their names all the same (the
    #: in-process ``memory``); False (the default): it is given names only (str)
    raw_keys: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    async def start(self) -> None:
        """Open files or connections; called once before the first ``get``."""

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def prefetch_get(self, key: str, batch: RequestBatch) -> Pending[bytes | None] | None:
        """:meth:`get`, queued on a request's shared-state batch (``state_url``), when this
        backend keeps its entries there; None (the default): it is asked with :meth:`get`."""
        return None

    def absent(self, key: str) -> bool:
        """Whether the backend can tell at once, without waiting, that it holds no entry
        for ``key`` (a lookup's miss: count it as one). False (the default): it cannot,
        and is asked with :meth:`get`. A backend that says True for a key it holds would
        turn that hit into a miss; one that says False only costs the lookup."""
        return False

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` in seconds (None: the backend's default)."""
        raise NotImplementedError

    def put(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """:meth:`set` at once, without waiting, when this backend can (it keeps its entries
        in the process, or queues its writes itself): the response cache then stores a
        miss's answer on the request's path, without a trip through its background
        writer. False (the default): it cannot, and the writer awaits :meth:`set`."""
        return False

    async def delete(self, key: str) -> bool:
        raise NotImplementedError

    async def clear(self) -> None:
        raise NotImplementedError

    async def stats(self) -> dict[str, Any]:
        """Numbers for ``GET /api/cache/stats``: ``entries``, ``bytes``, ``hits``, ``misses``."""
        return {}

    async def entries(self, limit: int) -> list[Listed]:
        """Up to ``limit`` live entries, most recently used first (for the management API)."""
        return []

    async def close(self) -> None:
        """Release connections or files the backend holds."""
