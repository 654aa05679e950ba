"""The idempotency keys in use: which request answers which key, and for how long."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

from omniroute.errors import IdempotencyConflict
from omniroute.idempotency.answer import SharedAnswer, State

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

#: (API key id or "" for anonymous clients, the client's idempotency key)
Scope = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished answer another instance made for a key: a JSON ``body``, or a
    stream's ``chunks`` (the whole stream)."""

    request_id: str
    stream: bool
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    chunks: tuple[bytes, ...] = ()


class Wait(enum.Enum):
    """:meth:`SharedKeys.claimed`'s answer when another instance's call is under way: the
    request must wait for it (``await`` :meth:`SharedKeys.claim`)."""

    WAIT = "wait"


#: :attr:`Wait.WAIT`
WAIT: Final = Wait.WAIT


class SharedKeys(Protocol):
    """Idempotency keys claimed across instances (``state_url``; None: this instance's own)."""

    def prefetch_claim(self, batch: RequestBatch, scope: Scope, fingerprint: bytes,
                       request_id: str, stream: bool) -> Pending[object]:
        """The first ask of :meth:`claim`, queued on a request's batch: pass it to
        :meth:`claim` as ``ahead`` (it then asks again only to wait for another instance)."""

    async def claim(self, scope: Scope, fingerprint: bytes, request_id: str,
                    stream: bool, ahead: Pending[object] | None = None) -> Finished | bool | None:
        """Claim ``scope`` for this request, where every instance sees it.

        :param ahead: its first ask, made with the request's batch (:meth:`prefetch_claim`).

        :returns: True when this request makes the call (:meth:`settled` tells the
            others its answer); the :class:`Finished` answer when another instance made
            or makes it (waited for, bounded by ``total_timeout``); None when the shared
            keys cannot be reached (this instance decides alone).
        :raises IdempotencyConflict: the key is in use with another fingerprint.
        :raises GatewayError: the other instance's call failed, or did not finish in time.
        """

    def claimed(self, scope: Scope, ahead: Pending[object]) -> Finished | bool | Wait | None:
        """:meth:`claim`'s answer read from its first ask, made with the request's batch
        (``ahead`` ran), without a coroutine: what :meth:`claim` would return (or raise),
        or :data:`WAIT` when another instance's call is under way; then await
        :meth:`claim` with the same ``ahead``, which waits for that call's answer."""

    def settled(self, scope: Scope, answer: SharedAnswer) -> None:
        """The answer of a key this instance claimed is final: publish it (a whole
        answer, kept for the window) or give the key up (must not block or raise)."""


class Idempotency:
    """Idempotency keys per API key: the answer each one shares, in flight or kept.

    The first request with a key :meth:`claim`\\ s it and makes the upstream call;
    its duplicates get its :class:`~omniroute.idempotency.answer.SharedAnswer`.
    A finished answer is kept for ``idempotency_window`` seconds (then forgotten;
    a failed or flawed one at once; the window is read when an answer is checked,
    so a window changed at run time applies to the answers already kept), at most
    ``idempotency_max_keys`` keys at once (the oldest kept answers go first; with
    only answers in flight, a new key is served without sharing). Lives on the app
    as ``appkeys.IDEMPOTENCY``.
    """

    def __init__(self, settings: Callable[[], Settings],
                 clock: Callable[[], float] = time.monotonic,
                 shared: SharedKeys | None = None) -> None:
        """
        :param settings: the live runtime settings (the window and bounds).
        :param clock: seconds, monotonic (tests move it).
        :param shared: claims keys across instances too (None: this instance alone).
        """
        self.settings = settings
        self.clock = clock
        self.shared = shared
        #: the keys this instance claimed in ``shared`` (their answers are published)
        self.claimed: set[Scope] = set()
        self.answers: dict[Scope, SharedAnswer] = {}
        #: finished answers by when they finished (the window is added when they are checked)
        self._kept: deque[tuple[float, Scope, SharedAnswer]] = deque()
        self._full_warned = False

    def claim(self, scope: Scope, fingerprint: bytes, request_id: str,
              stream: bool) -> tuple[SharedAnswer | None, bool]:
        """The answer for ``scope``, and whether this request makes it (is the first).

        ``(None, False)``: too many keys in flight; the request goes on alone.

        :raises IdempotencyConflict: the key is in use by a request with another body.
        """
        self._forget_expired()
        answer = self.answers.get(scope)
        if answer is not None:
            if answer.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    "This idempotency key was used by another request (a different body, "
                    "method or path) within its window; use a new key for a new request.",
                    param="Idempotency-Key")
            return answer, False
        settings = self.settings()
        while len(self.answers) >= settings.idempotency_max_keys and self._kept:
            self._forget(*self._kept.popleft()[1:])
        if len(self.answers) >= settings.idempotency_max_keys:
            if not self._full_warned:
                log.warning("%d idempotency keys in flight (idempotency_max_keys): new keys "
                            "are served without sharing", len(self.answers))
                self._full_warned = True
            return None, False
        self._full_warned = False
        answer = SharedAnswer(fingerprint, request_id, stream, settings.idempotency_max_bytes,
                              partial(self._settled, scope))
        self.answers[scope] = answer
        return answer, True

    def _settled(self, scope: Scope, answer: SharedAnswer) -> None:
        if scope in self.claimed and self.shared is not None:
            self.claimed.discard(scope)
            self.shared.settled(scope, answer)
        window = self.settings().idempotency_window
        if answer.state is State.DONE and not answer.flawed and answer.whole and window > 0:
            self._kept.append((self.clock(), scope, answer))
        else:  # failures and flawed answers are not replayed: a retry makes a new call
            self._forget(scope, answer)

    def _forget(self, scope: Scope, answer: SharedAnswer) -> None:
        if self.answers.get(scope) is answer:
            del self.answers[scope]

    def _forget_expired(self) -> None:
        # finished before this are past the window as it is now (it may have been
        # shortened since they were kept)
        kept, before = self._kept, self.clock() - self.settings().idempotency_window
        while kept and kept[0][0] <= before:
            self._forget(*kept.popleft()[1:])

    def stats(self) -> dict[str, Any]:
        """``active_keys`` (in flight and kept) and ``window_ms``, for ``GET /api/cache/stats``."""
        self._forget_expired()
        return {"active_keys": len(self.answers),
                "window_ms": round(self.settings().idempotency_window * 1000)}

    async def close(self) -> None:
        """Stop the shared streams still being read (the app is stopping)."""
        tasks = [a.task for a in self.answers.values() if a.task is not None and not a.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self.answers.clear()
        self._kept.clear()
