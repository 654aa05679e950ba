"""Sticky sessions: keep one conversation on one connection while it is healthy.

A session id comes from the client (headers ``X-Session-Id`` or
``x-omniroute-session``, or the body field ``x_session_id``) or, failing
that, from a fingerprint of the model, the system prompt and the first user
message: plain strings, so any client format can supply them. The
:class:`SessionStore` maps session ids to connection ids; entries expire
``ttl`` seconds after their last use and the least recently used go first
when it holds ``max_size``. The map itself is a table of the resilience
state store.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from omniroute.resilience.clock import Clock

SESSION_HEADERS = ("x-session-id", "x-omniroute-session")
SESSION_BODY_FIELD = "x_session_id"
#: a client-supplied id longer than this is hashed (the store keeps short keys)
MAX_ID_LENGTH = 128


def fingerprint(model: str, system: str | None, first_user: str | None) -> str | None:
    """A stable id for a conversation; ``None`` without a first user message."""
    if not first_user:
        return None
    digest = hashlib.sha256()
    for part in (model, system or "", first_user):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
        digest.update(data)
    return "fp:" + digest.hexdigest()[:32]


def session_id(
    headers: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    *,
    model: str = "",
    system: str | None = None,
    first_user: str | None = None,
) -> str | None:
    """The request's session id: a header, the body field, else the fingerprint."""
    found: str | None = None
    if headers:
        lower = {k.lower(): v for k, v in headers.items() if k.lower() in SESSION_HEADERS}
        found = next((lower[h].strip() for h in SESSION_HEADERS if lower.get(h, "").strip()), None)
    if found is None and body is not None:
        value = body.get(SESSION_BODY_FIELD)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            found = str(value).strip()
    if found is not None:
        if len(found) > MAX_ID_LENGTH or not (found.isascii() and found.isprintable()):
            # it goes back in a response header: control characters would break it
            found = "h:" + hashlib.sha256(found.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return found
    return fingerprint(model, system, first_user)


class SessionStore:
    """Session id -> connection id, with a sliding TTL and an LRU bound."""

    def __init__(
        self, *, ttl: float, max_size: int, clock: Clock,
        items: OrderedDict[str, tuple[str, float]] | None = None,
    ) -> None:
        """
        :param items: the table of ``session id -> (connection id, expiry)`` to keep them
            in (a :class:`~omniroute.resilience.state.StateStore`'s ``sessions``; a
            fresh one when omitted).
        """
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        self._items = items if items is not None else OrderedDict()

    def __len__(self) -> int:
        self._expire(self.clock.monotonic())
        return len(self._items)

    def get(self, session: str) -> str | None:
        """The connection id bound to ``session`` (and refresh its TTL), or ``None``."""
        now = self.clock.monotonic()
        item = self._items.get(session)
        if item is None:
            return None
        connection_id, expires = item
        if expires <= now:
            del self._items[session]
            return None
        self._items[session] = (connection_id, now + self.ttl)
        self._items.move_to_end(session)
        return connection_id

    def bind(self, session: str, connection_id: str) -> None:
        now = self.clock.monotonic()
        self._items[session] = (connection_id, now + self.ttl)
        self._items.move_to_end(session)
        self._expire(now)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def forget(self, *, session: str | None = None, connection_id: str | None = None) -> None:
        """Drop one session, or every session bound to a connection, or (no argument) all."""
        if session is not None:
            self._items.pop(session, None)
        elif connection_id is not None:
            for key in [k for k, (c, _) in self._items.items() if c == connection_id]:
                del self._items[key]
        else:
            self._items.clear()

    def retain(self, connection_ids: set[str]) -> None:
        """Drop the sessions bound to connections not in ``connection_ids``."""
        for key in [k for k, (c, _) in self._items.items() if c not in connection_ids]:
            del self._items[key]

    def configure(self, *, ttl: float, max_size: int) -> None:
        self.ttl, self.max_size = ttl, max_size
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def _expire(self, now: float) -> None:
        # entries are in last-use order and share one TTL, so the stale ones lead
        while self._items:
            key, (_, expires) = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[key]

    def snapshot(self, limit: int = 100) -> dict[str, Any]:
        now = self.clock.monotonic()
        self._expire(now)
        recent = list(reversed(self._items.items()))[:limit]
        return {
            "count": len(self._items),
            "max": self.max_size,
            "ttl": self.ttl,
            "items": [{"session": s, "connection_id": c, "expires_in": round(e - now, 3)}
                      for s, (c, e) in recent],
        }
