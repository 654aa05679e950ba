"""One gateway's link to Redis: every call bounded, and whether Redis can be reached.

:meth:`Link.call` runs one round trip (a command, a script or a pipeline) under
the ``state_timeout`` setting. The first failure marks the link **down**: it is
logged once, every later call fails at once with :class:`Unreachable` (so a
request never waits on a dead server, its part decides with this instance's own
numbers), and a probe pings Redis with a growing pause (at most
:data:`PROBE_MAX` seconds). When a ping answers the link is **up** again, which
is logged once, and every recovery callback runs (the parts resync).

:meth:`Link.listen` keeps one pub/sub connection subscribed to the channels and
hands each message to its channel's handler; when the connection breaks it
marks the link down and subscribes again once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from omniroute.config import redact_url

from omniroute_redis.wire import Command, ErrorReply, Wire, WireError, Writes

if TYPE_CHECKING:  # imported when a link is made: an installed plugin costs nothing
    from redis import asyncio as aioredis

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the longest pause between two probes while Redis cannot be reached (seconds)
PROBE_MAX = 1.0
#: the first pause (doubled after each failed probe)
PROBE_MIN = 0.05
#: seconds a pub/sub read waits before it looks again (and sees a cancellation)
LISTEN_POLL = 1.0
#: the errors that mean "Redis is not there" (a refused or reset connection, a timeout;
#: redis-py's ``RedisError`` is added when it is imported); an error reply (a script's
#: own error, ``NOSCRIPT``) is not one
FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError, WireError)


def _redis() -> tuple[Any, type[BaseException], type[BaseException]]:
    """redis-py's asyncio module and its base and error-reply exceptions (imported late)."""
    global FAILURES
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError

    if RedisError not in FAILURES:
        FAILURES = (*FAILURES, RedisError)
    return aioredis, RedisError, ResponseError


#: the query parameter naming the key namespace (``redis://host/0?prefix=team-a``)
PREFIX_PARAM = "prefix"


def split_prefix(url: str) -> tuple[str, str]:
    """``(url without ?prefix=, prefix)``; the default namespace is ``omniroute``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == PREFIX_PARAM and v), "omniroute")
    rest = urlencode([(k, v) for k, v in query if k != PREFIX_PARAM])
    return urlunsplit(parts._replace(query=rest)), prefix


class Unreachable(Exception):
    """Redis cannot be reached now; the caller decides with its own numbers."""


class Unanswered(Unreachable):
    """The command was sent and its reply did not come in time (or the connection broke
    first): Redis may have run it, so what it takes may have been taken."""


class Link:
    """The Redis client of one gateway, and its reachability.

    :param url: the ``state_url`` (``redis://``, ``rediss://`` or ``unix://``).
    :param timeout: the seconds one call may take (read per call: a live setting).
    :param prefix: the namespace of every key and channel (several gateways may share
        a Redis server under different prefixes).
    """

    def __init__(self, url: str, *, timeout: Callable[[], float],
                 prefix: str = "omniroute") -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        module, _, self._reply_error = _redis()
        self.client: aioredis.Redis = module.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=0)
        self.up = True
        #: when the link went down (epoch seconds), and why
        self.down_since: float | None = None
        self.last_error: str | None = None
        #: round trips that failed, and times the link went down
        self.failures = 0
        self.outages = 0
        #: error replies to a request's batch (a script failed partway), and the last one
        self.errors = 0
        self.last_reply_error: str | None = None
        self._recovered: list[Callable[[], Awaitable[None]]] = []
        self._probe: asyncio.Task[None] | None = None
        self._closing = False
        #: the request path's own connection (:mod:`.wire`), opened on first use
        self._wire: Wire | None = None
        self._opening: asyncio.Future[Wire] | None = None
        #: the replies awaited on it, with the times they were sent, in the order they were
        #: sent (:meth:`bound`), and the one timer that expires the late ones
        self._deadlines: deque[tuple[float, asyncio.Future[Any] | Writes]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def key(self, *parts: str) -> str:
        """A key (or channel) name in this gateway's namespace."""
        return ":".join((self.prefix, *parts))

    def on_recovery(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` each time the link is up again (its errors are logged)."""
        self._recovered.append(callback)

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]], *,
                   timeout: float | None = None) -> T:
        """One bounded round trip (``timeout``, default the ``state_timeout`` setting);
        :class:`Unreachable` at once while the link is down."""
        if not self.up:
            raise Unreachable(self.last_error or "down")
        try:
            async with asyncio.timeout(timeout or self.timeout()):
                return await fn(self.client)
        except self._reply_error:
            raise
        except FAILURES as exc:
            self.lost(exc)
            raise Unreachable(str(exc)) from exc

    async def _connected(self) -> Wire:
        wire = self._wire
        if wire is not None and wire.broken is None:
            return wire
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(Wire.open(self.url))
        wire = self._wire = await asyncio.shield(self._opening)
        return wire

    async def command(self, *args: Any, late: Callable[[Any], None] | None = None,
                      riders: Any = None) -> Any:
        """One command on the request path's connection, bounded like :meth:`call`.

        :param args: the command's arguments, or one: the command packed already (bytes,
            :meth:`Scripts.packed <.scripts.Scripts.packed>`).

        :param late: when the caller is cancelled before the reply comes, gets the reply,
            or the exception it ended with (an :class:`ErrorReply`; a ``TimeoutError``
            when it did not come within the bound, which still holds; a
            :class:`WireError` when the connection broke): what the command took can
            then be given back.
        :param riders: writes that go in the same write to the socket, before the command
            (:meth:`Batch.ride <.batch.Batch.ride>`: the writes queued after answers), if
            it has any: ``ride()`` gives them, ``rode(ride, replies)`` gets their replies (one
            group's future, :meth:`Wire.send_group <.wire.Wire.send_group>`)
            once they are sent, ``unride(ride)`` takes them back when they are not.
        :raises ErrorReply: Redis answered with an error (``NoScript`` included).
        :raises Unanswered: it was sent and no reply came within the bound.
        :raises Unreachable: Redis cannot be reached (nothing was sent).
        """
        if not self.up:
            raise Unreachable(self.last_error or "down")
        sent = False
        try:
            wire = self._wire
            if wire is None or wire.broken is not None:
                async with asyncio.timeout(self.timeout()):
                    wire = await self._connected()
            reply = self._send(wire, args[0] if type(args[0]) is bytes else args, riders)
            sent = True
            if late is None:
                return await reply
            try:
                return await reply  # (not shielded: a shield costs a future and two callbacks)
            except asyncio.CancelledError:
                self.abandoned(reply, late)
                raise
        except ErrorReply:
            raise
        except FAILURES as exc:
            self.lost(exc)
            raise (Unanswered if sent else Unreachable)(str(exc)) from exc

    def post(self, command: bytes, riders: Any) -> asyncio.Future[Any] | None:
        """:meth:`command`'s send, for a caller that awaits the reply itself (one coroutine
        fewer on the request path): the reply's future, bounded like :meth:`command`'s
        (its failures are the caller's to hand to :meth:`lost`; a cancelled caller's reply
        goes to :meth:`abandoned`). None: the connection is not open yet (await
        :meth:`command`, which opens it).

        :raises Unreachable: Redis cannot be reached (nothing was sent).
        """
        if not self.up:
            raise Unreachable(self.last_error or "down")
        wire = self._wire
        if wire is None or wire.broken is not None:
            return None
        try:
            return self._send(wire, command, riders)
        except FAILURES as exc:  # (broken since: nothing was sent)
            self.lost(exc)
            raise Unreachable(str(exc)) from exc

    def _send(self, wire: Wire, command: Command, riders: Any) -> asyncio.Future[Any]:
        """Write ``command`` (after ``riders``' writes, if it has any), bound its reply."""
        ride = riders.ride() if riders is not None else None
        if ride is None:
            reply = (wire.send_packed(command) if type(command) is bytes
                     else wire.send(*command))
        else:
            try:
                replies, then = wire.send_group(ride[0], command)
            except WireError:
                riders.unride(ride)
                raise
            assert then is not None
            reply = then
            riders.rode(ride, replies)
        self.bound(reply)
        return reply

    def abandoned(self, reply: asyncio.Future[Any], late: Callable[[Any], None]) -> None:
        """The caller awaiting ``reply`` was cancelled: the reply is read for ``late`` by a
        new future in its place (bounded by the watchdog); one that came meanwhile
        (dropped, as a cancelled one's) is lost to ``late``."""
        if reply.cancelled():
            wire = self._wire
            fresh = wire.adopt(reply) if wire is not None else None
            if fresh is None:
                late(WireError("cancelled before its reply was read"))
                return
            reply = fresh
            self.bound(reply)
        reply.add_done_callback(partial(self._late, late))

    def ready(self) -> Wire | None:
        """The request path's connection when it can take a command now (the link is up,
        the connection open and whole), else None."""
        wire = self._wire
        if wire is None or wire.broken is not None or not self.up:
            return None
        return wire

    def bound(self, reply: asyncio.Future[Any] | Writes) -> None:
        """Fail ``reply`` with a ``TimeoutError`` when it has not come within the
        ``state_timeout`` setting. One timer serves every reply awaited (a timer each
        cost more than the command): the replies come in the order they were sent, so
        the watchdog looks at the oldest one still awaited, and sleeps until its
        deadline. A reply is kept with the time it was sent, and the setting is read
        when the watchdog is armed or looks (not once a reply: it is a live setting,
        read through two calls)."""
        loop = reply.get_loop()  # (asyncio.get_running_loop() costs a getpid system call)
        sent = loop.time()
        self._deadlines.append((sent, reply))
        if self._watchdog is None:
            self._watchdog = loop.call_at(sent + self.timeout(), self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        deadlines = self._deadlines
        last = deadlines[-1][1] if deadlines else None
        if last is not None and last.done() and not last.cancelled():
            # the replies come in order: the last one awaited is in (or its connection
            # broke, which failed every one before it), so every one before it is done
            # too (a cancelled one's reply, read for ``late``, was bound again after it)
            deadlines.clear()
            return
        timeout = self.timeout()
        while deadlines:
            sent, reply = deadlines[0]
            loop = reply.get_loop()
            if reply.done():
                deadlines.popleft()
            elif sent + timeout > loop.time():
                self._watchdog = loop.call_at(sent + timeout, self._watch)
                return
            else:
                deadlines.popleft()
                _expire(reply)

    def _late(self, late: Callable[[Any], None], reply: asyncio.Future[Any]) -> None:
        """The reply of a command whose caller was cancelled: to ``late``, and a reply
        that did not come marks the link down as an awaited one does."""
        if reply.cancelled():
            late(WireError("cancelled"))
            return
        exc = reply.exception()
        if exc is None:
            late(reply.result())
            return
        if isinstance(exc, FAILURES):
            self.lost(exc)
        late(exc)

    async def commands(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one write (one round trip); an error reply is returned in
        place of its result.

        :raises Unreachable: Redis cannot be reached.
        """
        if not self.up:
            raise Unreachable(self.last_error or "down")
        try:
            async with asyncio.timeout(self.timeout()):
                wire = self._wire
                if wire is None or wire.broken is not None:
                    wire = await self._connected()
                results = list(await asyncio.gather(*wire.send_many(commands),
                                                    return_exceptions=True))
            broken = next((r for r in results if isinstance(r, WireError)), None)
            if broken is not None:
                raise broken
            return results
        except FAILURES as exc:
            self.lost(exc)
            raise Unreachable(str(exc)) from exc

    def errored(self, exc: ErrorReply) -> None:
        """A request's script failed in Redis (``OOM``, ``READONLY``, ``WRONGTYPE``): counted,
        and logged when its error is not the one logged last (Redis is up: not an outage)."""
        self.errors += 1
        text = str(exc)[:300]
        if text != self.last_reply_error:
            self.last_reply_error = text
            log.warning("redis at %s answered a request's script with an error (%s); its "
                        "parts decide with this instance's own state", redact_url(self.url),
                        text)

    def lost(self, exc: BaseException) -> None:
        """A call failed: mark the link down (logged once) and start probing."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if not self.up or self._closing:
            return
        self.up = False
        self.outages += 1
        if self._wire is not None:
            self._wire.close()
        self.down_since = time.time()
        log.warning("redis at %s cannot be reached (%s); each instance uses its own state "
                    "until it is back", redact_url(self.url), self.last_error)
        self._probe = asyncio.create_task(self._probing(), name="omniroute-redis-probe")

    async def _probing(self) -> None:
        pause = PROBE_MIN
        while True:
            await asyncio.sleep(pause)
            try:
                async with asyncio.timeout(max(self.timeout(), 0.5)):
                    await self.client.ping()
            except FAILURES:
                pause = min(PROBE_MAX, pause * 2)
                continue
            break
        down = time.time() - (self.down_since or time.time())
        self.up, self.down_since = True, None
        log.warning("redis at %s is back after %.1fs; resyncing the shared state",
                    redact_url(self.url), down)
        for callback in self._recovered:
            try:
                await callback()
            except Exception:
                log.exception("resyncing after redis came back failed")

    async def listen(self, handlers: dict[str, Callable[[bytes], None]],
                     subscribed: Callable[[bool], Awaitable[None]]) -> None:
        """Stay subscribed to ``handlers``' channels until cancelled.

        :param handlers: channel name -> handler of each message's data (must not raise).
        :param subscribed: awaited after each subscription (True: again, after a loss:
            what was published meanwhile was missed).
        """
        again = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(max(self.timeout(), 1.0)):
                    await pubsub.subscribe(*handlers)
                await subscribed(again)
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_POLL)
                    if message is None or message.get("type") != "message":
                        continue
                    channel = message["channel"]
                    handler = handlers.get(channel.decode() if isinstance(channel, bytes)
                                           else channel)
                    if handler is not None:
                        handler(message["data"])
            except FAILURES as exc:
                self.lost(exc)
                again = True
                while not self.up:
                    await asyncio.sleep(PROBE_MIN)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await pubsub.aclose()

    def publish(self, channel: str, data: bytes | str) -> None:
        """Publish in the background (dropped while the link is down)."""
        if self.up:
            task = asyncio.ensure_future(self._publish(channel, data))
            task.add_done_callback(_quiet)

    async def _publish(self, channel: str, data: bytes | str) -> None:
        with contextlib.suppress(Unreachable):
            await self.call(lambda r: r.publish(channel, data))

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.up, "outages": self.outages,
                               "failed_calls": self.failures, "script_errors": self.errors}
        if not self.up:
            out["down_for_s"] = round(time.time() - (self.down_since or time.time()), 1)
            out["error"] = self.last_error
        return out

    def closing(self) -> None:
        """The gateway is closing: a failure from now on is not news worth a warning."""
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._wire is not None:
            self._wire.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.client.aclose()


def _expire(reply: asyncio.Future[Any] | Writes) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError("redis did not answer within state_timeout"))


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve a background task's outcome (a failure was already counted by the link)."""
    if not task.cancelled():
        task.exception()
