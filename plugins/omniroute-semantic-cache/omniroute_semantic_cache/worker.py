"""The one thread that encodes, searches and writes, off the event loop.

Everything heavy the layer does (importing torch, encoding, faiss, SQLite) runs
here, one job at a time: the model is used by a single thread (several calling
threads would each start an OpenMP team and oversubscribe the cores), and the
indexes and the database need no locks. torch releases the GIL inside its
kernels, so the event loop keeps serving while a prompt is encoded.

Every wait is bounded: at most ``limit`` jobs may be queued or running (past
that :class:`Busy` is raised at once), and a caller waits at most ``timeout``
seconds (``TimeoutError``; a job not yet started is cancelled, one running
finishes and still counts against the limit until it does). The layer turns
both into a miss: the cache fails open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(RuntimeError):
    """Too many jobs are queued: the caller goes on without the worker."""


class Worker:
    """A single-thread executor with a bound on queued jobs and on each wait."""

    def __init__(self, name: str = "omniroute-semantic") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                           thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0
        self.closed = False

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)`` with no bound and no wait (start-up work)."""
        with self._lock:
            self._pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._done)
        return future

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float, limit: int) -> T:
        """``fn(*args)`` in the thread; :class:`Busy` past ``limit`` jobs, ``TimeoutError``
        past ``timeout`` seconds."""
        with self._lock:
            if self.closed or self._pending >= limit:
                raise Busy(f"{self._pending} jobs queued")
            self._pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._done)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def close(self, last: Callable[[], object], timeout: float) -> None:
        """Run ``last`` after the queued jobs (release files), then stop the thread.

        Waits at most ``timeout`` seconds; a job still running then (a model still
        loading) finishes on its own, and the thread ends after it.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._pending += 1
        future = self._pool.submit(last)
        future.add_done_callback(self._done)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
