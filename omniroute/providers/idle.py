"""The idle bound on upstream reads (aiohttp's ``sock_read``), with one lazy timer.

aiohttp bounds every wait for upstream bytes with ``sock_read``: each time bytes
arrive it cancels its timer and starts a fresh one (``loop.call_later``), a few per
JSON answer and one per socket read of a stream. On the asyncio loop each costs a
``TimerHandle``, a heap push and, once cancelled, a heap pop.

:class:`LazyReadTimeout` keeps the bound exact with one timer per wait instead:
arriving bytes only store ``last = loop.time()``; the one timer fires at the deadline
it was armed for and, if bytes came meanwhile, re-arms itself for ``last + timeout``;
if none came, the wait is over exactly as aiohttp ends it
(:class:`aiohttp.SocketTimeoutError` on the answer). Everything else (the timer
stopped while the client pauses reading, or once the answer is whole) is aiohttp's.

    connector = lazy_read_timeouts(aiohttp.TCPConnector(...))
"""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp.client_proto import ResponseHandler


class LazyReadTimeout(ResponseHandler):
    """aiohttp's connection protocol, its read timeout re-armed lazily (see the module)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        #: when bytes last came (or the wait began), and when the armed timer fires
        self._read_last = 0.0
        self._read_due = 0.0

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._drop_timeout()
            return
        now = self._read_last = self._loop.time()
        handle = self._read_timeout_handle
        if handle is None or now + timeout < self._read_due:  # none armed, or a shorter bound
            if handle is not None:
                handle.cancel()
            self._arm(now + timeout)

    def _arm(self, due: float) -> None:
        self._read_due = due
        self._read_timeout_handle = self._loop.call_at(due, self._read_timer_fired)

    def _read_timer_fired(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._read_timeout_handle = None
            return
        due = self._read_last + timeout
        if self._loop.time() < due:  # bytes came meanwhile: the bound runs from the last
            self._arm(due)
            return
        self._read_timeout_handle = None
        self._on_read_timeout()


def lazy_read_timeouts(connector: aiohttp.TCPConnector) -> aiohttp.TCPConnector:
    """``connector``, its connections made with :class:`LazyReadTimeout`."""
    connector._factory = functools.partial(  # type: ignore[assignment]
        LazyReadTimeout, loop=connector._loop)
    return connector
