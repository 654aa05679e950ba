"""The cache keys of requests seen before, so that a repeated request is not decoded again.

A cache key (:func:`omniroute.cache.key.cache_key`) is a function of the canonical
request, which is a function of what the client sent: the body's bytes, the model and
stream flag read from them (or from the URL), the query, the client format, plus the
tenant, the provider prefix, whether a layer is active and the cache mode. A
:class:`KeyMemo` maps exactly those inputs (a slot, made by the stage; the bytes
themselves, not a digest of them, so two different bodies never share a slot) to the key
of a hit. A hit on a repeated request then skips the decode and the key's hashing.

Beside the key it keeps that hit's canonical request: a hit encodes its answer for it
(``Format.encode_response``). Only hits are kept, so only a hit's request (never one
that went on to an upstream), and encoders only read it; a stream of new requests (all
misses) costs the memo nothing.

What can change from one request to the next without changing those inputs (the API
key's model allow-list) is checked by the stage every time. The memo is bounded in
entries and in the bytes of the bodies it holds; the oldest used goes first. One per
app (the cache stage's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from omniroute.cache.key import Exact
from omniroute.cache.layer import CacheKey
from omniroute.formats import canonical as c

#: entries kept, and the bytes of their bodies
MAX_ENTRIES = 4096
MAX_BYTES = 32 * 2**20


@dataclass(slots=True)
class Known:
    """What a request seen before is, for the cache."""

    #: the request's exact key (:data:`~omniroute.cache.key.Exact`)
    exact: Exact
    #: its whole key, made while a layer was active (None: no layer was)
    key: CacheKey | None
    #: the request in the canonical model, as a hit decoded it
    request: c.Request


class KeyMemo:
    """Request inputs (a slot) -> :class:`Known`, bounded, least recently used out."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        """
        :param max_entries: entries kept at most.
        :param max_bytes: the bodies' bytes kept at most; a body larger than a sixteenth
            of it is never kept.
        """
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_body = max_bytes // 16
        self.size = 0
        self._known: OrderedDict[tuple[Hashable, ...], Known] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def get(self, slot: tuple[Hashable, ...]) -> Known | None:
        known = self._known.get(slot)
        if known is not None:
            self._known.move_to_end(slot)
        return known

    def put(self, slot: tuple[Hashable, ...], known: Known) -> bool:
        """Keep ``known`` for ``slot`` (whose last item is the body's bytes); False: too large."""
        size = len(slot[-1])  # type: ignore[arg-type]
        if size > self.max_body:
            return False
        if self._known.pop(slot, None) is not None:
            self.size -= size
        self._known[slot] = known
        self.size += size
        while len(self._known) > self.max_entries or self.size > self.max_bytes:
            old, _ = self._known.popitem(last=False)
            self.size -= len(old[-1])  # type: ignore[arg-type]
        return True

    def clear(self) -> None:
        self._known.clear()
        self.size = 0
