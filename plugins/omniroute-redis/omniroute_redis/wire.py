"""The request path's Redis connection: one socket, RESP2, commands pipelined.

redis-py's asyncio client spends about 200 µs of CPU on one command (its pool,
its connection objects, its parser): on the request path, where a limited
connection's slot is taken and given back, that alone would double a proxied
request's cost. This connection does only what the request path needs: it
writes each command at once (commands of concurrent requests go back to back
on the one socket), and a small parser hands the replies, which Redis sends in
order, to the waiting futures (about 20 µs a command). Everything else (loading
records, pub/sub, the cache's listing) stays on redis-py, imported only when a
gateway uses the plugin (installed, it costs nothing: redis-py takes ~200 ms and 10 MiB
to import).

A command whose caller stopped waiting (a timeout) keeps its place: its reply is
read and dropped, so the replies after it still reach their own callers.

With hiredis (a dependency of the plugin; redis-py uses it too), commands are packed
and replies parsed by its C code: the same bytes and the same values, at a third of
the CPU. Without it (a platform with no wheel) this module's own parser does it.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice
from typing import Any
from urllib.parse import unquote, urlsplit

_hiredis: Any
try:  # optional: the same wire format, in C
    _hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover - depends on the installation
    _hiredis = None

Reply = bytes | int | list[Any] | None


class WireError(ConnectionError):
    """The connection broke (or never opened): every command waiting on it fails."""


class ErrorReply(Exception):
    """Redis answered a command with an error (a script's own error, a wrong type).

    Made by hiredis' reader for each error reply: one that says ``NOSCRIPT`` is made a
    :class:`NoScript` at once, so no reply needs a second look."""

    def __new__(cls, *args: Any) -> ErrorReply:
        if cls is ErrorReply and args and str(args[0]).startswith("NOSCRIPT"):
            cls = NoScript
        return super().__new__(cls, *args)


class NoScript(ErrorReply):
    """``NOSCRIPT``: Redis does not know the script (it restarted): load it again."""


def encode(args: tuple[Any, ...]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    if _hiredis is not None:
        try:
            packed: bytes = _hiredis.pack_command(args)
            return packed
        except TypeError:  # a type it does not take (a bool, None): ours below
            pass
    return _encode(args)


#: a command: its arguments, or the command packed already (RESP bytes: the request
#: path packs the fixed parts of its commands once, :func:`bulks`)
Command = tuple[Any, ...] | bytes


def bulks(args: tuple[Any, ...]) -> bytes:
    """Arguments as RESP bulk strings back to back, without the array's header: the
    variable part of a command whose fixed part (``EVALSHA``, the script's SHA, key
    names that do not change) was packed once. Packing costs per argument (hiredis
    formats each one's length with ``sprintf``), so a request packs only what is its own."""
    try:
        packed: bytes = _pack(args)
    except TypeError:  # a type hiredis does not take (a bool, None)
        packed = _encode(args)
    return packed[packed.index(b"\n") + 1:]


def bulk(data: bytes) -> bytes:
    """One bulk string (bytes in hand: cheaper than :func:`bulks` for one)."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _joined(commands: Sequence[Command]) -> bytes:
    """Several commands as RESP, back to back."""
    try:
        return b"".join(commands)  # type: ignore[arg-type]  # (all packed already)
    except TypeError:
        pass
    try:
        return b"".join([c if isinstance(c, bytes) else _pack(c) for c in commands])
    except TypeError:  # a type hiredis does not take (a bool, None): each one by encode()
        return b"".join([c if isinstance(c, bytes) else encode(c) for c in commands])


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: one command as RESP, the fastest way installed (may raise TypeError: :func:`encode`)
_pack: Any = _hiredis.pack_command if _hiredis is not None else _encode


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at ``pos``: ``(value, position after it)``."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return bytes(line), pos
    if kind == b"-":
        text = bytes(line).decode(errors="replace")
        return ErrorReply(text), pos  # (a NoScript, for NOSCRIPT)
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise WireError(f"unexpected reply type {kind!r}")


class _Group:
    """The replies of a group of commands (:meth:`Wire.send_group`): its future gets
    the list of them once ``count`` have come. It waits in :attr:`Wire._waiting` once,
    not once a command: hiredis's replies are read into :attr:`found` by C code
    (:meth:`Wire._received`), with no Python a reply."""

    __slots__ = ("count", "found", "future")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future, self.count = future, count
        self.found: list[Any] = []

    def add(self, value: Any) -> bool:
        """One more reply (this module's parser); True: the group is complete."""
        found = self.found
        found.append(value)
        if len(found) < self.count:
            return False
        if not self.future.done():
            self.future.set_result(found)
        return True

    def complete(self) -> None:
        if not self.future.done():
            self.future.set_result(self.found)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Writes(_Group):
    """The replies of a pipeline of writes (:meth:`Wire.send_writes`): ``then`` gets it
    once they are all in (:attr:`found`), or once they failed (:attr:`error`: the
    connection broke, or the watchdog's ``TimeoutError``), called from the read itself:
    no future, no turn of the event loop. It answers the watchdog (:meth:`Link.bound
    <.link.Link.bound>`) as a future would."""

    __slots__ = ("error", "loop", "then")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int,
                 then: Callable[[Writes], None]) -> None:
        self.count, self.loop, self.then = count, loop, then
        self.found: list[Any] = []
        self.error: BaseException | None = None

    def add(self, value: Any) -> bool:
        found = self.found
        found.append(value)
        if len(found) < self.count:
            return False
        self.complete()
        return True

    def complete(self) -> None:
        then, self.then = self.then, None  # type: ignore[assignment]  # (None: done)
        if then is not None:
            then(self)

    def fail(self, exc: BaseException) -> None:
        then, self.then = self.then, None  # type: ignore[assignment]
        if then is not None:
            self.error = exc
            then(self)

    # the watchdog's view of it
    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def done(self) -> bool:
        return self.then is None

    def cancelled(self) -> bool:
        return False

    set_exception = fail


#: the waiters that stand for several replies
_GROUPS = (_Group, Writes)


#: what hiredis's reader gives when the buffer holds no whole reply (a value no reply
#: equals: ``iter(gets, MORE)`` stops there, and only there)
_MORE: Any = object()


class Wire(asyncio.Protocol):
    """One pipelined connection; :meth:`open` connects (and authenticates, selects)."""

    def __init__(self) -> None:
        #: the loop it runs on (asking asyncio for the running loop costs a ``getpid``
        #: system call each time: once here, not per command)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        #: what waits for the replies to come, in order: a command's future, or a
        #: group's (:meth:`send_group`: once, for all of its commands' replies)
        self._waiting: deque[Any] = deque()
        self._buffer = bytearray()
        self._reader = (_hiredis.Reader(replyError=ErrorReply, protocolError=WireError,
                                        notEnoughData=_MORE)
                        if _hiredis is not None else None)
        if self._reader is not None:  # (read by hiredis: no dispatch a read)
            self.data_received = partial(self._received, self._reader)  # type: ignore[method-assign]
        self.broken: BaseException | None = None
        #: writes to the socket: each is one round trip for what it carries (a command,
        #: or a pipeline of them)
        self.writes = 0

    @classmethod
    async def open(cls, url: str) -> Wire:
        """Connect to ``url`` (``redis://``, ``rediss://``, ``unix://``), then ``AUTH`` and
        ``SELECT`` as it says. Bound it with a timeout."""
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        wire = cls()
        if parts.scheme == "unix":
            await loop.create_unix_connection(lambda: wire, parts.path)
            db = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
        else:
            context = ssl.create_default_context() if parts.scheme == "rediss" else None
            await loop.create_connection(lambda: wire, parts.hostname or "127.0.0.1",
                                         parts.port or 6379, ssl=context)
            db = parts.path.strip("/") or "0"
        if parts.password is not None:
            auth = ((unquote(parts.username), unquote(parts.password)) if parts.username
                    else (unquote(parts.password),))
            await wire.call("AUTH", *auth)
        if db != "0":
            await wire.call("SELECT", db)
        return wire

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._reader is not None:  # (not reached: __init__ binds _received in its place)
            self._received(self._reader, data)
            return
        buf = self._buffer
        buf += data
        pos = 0
        waiting = self._waiting
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                if not waiting:
                    raise WireError("a reply nobody asked for")
                waiter = waiting[0]
                if type(waiter) in _GROUPS:
                    if waiter.add(value):
                        waiting.popleft()
                    continue
                waiting.popleft()
                if not waiter.done():
                    if isinstance(value, Exception):
                        waiter.set_exception(value)
                    else:
                        waiter.set_result(value)
        except _Incomplete:
            pass
        except (WireError, ValueError) as exc:
            self._fail(WireError(str(exc)))
            if self._transport is not None:
                self._transport.close()
            return
        del buf[:pos]

    def _received(self, reader: Any, data: bytes) -> None:
        """:meth:`data_received` with hiredis's parser. A group's replies are read into
        its list by C code (``islice`` over ``iter(reader.gets, MORE)``): a pipeline of
        five writes costs the loop one turn, not five."""
        reader.feed(data)
        waiting = self._waiting
        gets = reader.gets
        try:
            while waiting:
                waiter = waiting[0]
                if type(waiter) in _GROUPS:
                    found = waiter.found
                    found += islice(iter(gets, _MORE), waiter.count - len(found))
                    if len(found) < waiter.count:
                        return  # the rest comes in a later read
                    waiting.popleft()
                    waiter.complete()
                    continue
                value = gets()
                if value is _MORE:
                    return
                waiting.popleft()
                if waiter.done():
                    continue
                if isinstance(value, ErrorReply):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
            if gets() is not _MORE:
                raise WireError("a reply nobody asked for")
        except WireError as exc:
            self._fail(exc)
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(WireError(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail(self, exc: BaseException) -> None:
        self.broken = exc
        while self._waiting:
            waiter = self._waiting.popleft()
            if type(waiter) in _GROUPS:
                waiter.fail(exc)
            elif not waiter.done():
                waiter.set_exception(exc)

    # ------------------------------------------------------------------ commands

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Write one command now; the future gets its reply (an error reply is raised)."""
        try:
            data = _pack(args)
        except TypeError:
            data = encode(args)
        return self.send_packed(data)

    def send_packed(self, data: bytes) -> asyncio.Future[Any]:
        """:meth:`send` of a command packed already (RESP bytes)."""
        if self.broken is not None or self._transport is None:
            raise WireError(str(self.broken or "not connected"))
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append(waiter)
        self._transport.write(data)
        self.writes += 1
        return waiter

    async def call(self, *args: Any) -> Any:
        return await self.send(*args)

    def send_many(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Write several commands in one write; one future each."""
        if self.broken is not None or self._transport is None:
            raise WireError(str(self.broken or "not connected"))
        loop = self._loop
        waiters = [loop.create_future() for _ in commands]
        self._waiting.extend(waiters)
        self._transport.write(_joined(commands))
        self.writes += 1
        return waiters

    def adopt(self, waiter: asyncio.Future[Any]) -> asyncio.Future[Any] | None:
        """A new future in the place of ``waiter`` (cancelled before its reply came): the
        reply is read for it. None: ``waiter`` no longer waits (its reply came and was
        dropped, or the connection broke)."""
        try:
            place = self._waiting.index(waiter)
        except ValueError:
            return None
        fresh: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[place] = fresh
        return fresh

    def send_writes(self, commands: list[Command], then: Callable[[Writes], None]) -> Writes:
        """Write several commands in one write; ``then`` gets their :class:`Writes` from the
        read that completes them (the list of their replies, an error reply in place of
        its result), or once they failed."""
        if self.broken is not None or self._transport is None:
            raise WireError(str(self.broken or "not connected"))
        group = Writes(self._loop, len(commands), then)
        self._waiting.append(group)
        try:  # (all packed already, as on the request path: _joined's first try, in line)
            data = b"".join(commands)  # type: ignore[arg-type]
        except TypeError:
            data = _joined(commands)
        self._transport.write(data)
        self.writes += 1
        return group

    def send_group(self, commands: Sequence[Command], then: Command | None = None
                   ) -> tuple[asyncio.Future[list[Any]], asyncio.Future[Any] | None]:
        """Write several commands in one write, and ``then`` after them (in the same
        write): one future for the group, whose result is the list of their replies (an
        error reply in place of its result: an :class:`ErrorReply`, a :class:`NoScript`),
        and ``then``'s own future (None: no ``then``). A group costs one future, not one a
        command (the writes that follow answers are read together)."""
        if self.broken is not None or self._transport is None:
            raise WireError(str(self.broken or "not connected"))
        loop = self._loop
        group: asyncio.Future[list[Any]] = loop.create_future()
        if commands:
            self._waiting.append(_Group(group, len(commands)))
        else:  # (nothing to wait for)
            group.set_result([])
        reply: asyncio.Future[Any] | None = None
        if then is not None:
            reply = loop.create_future()
            self._waiting.append(reply)
            commands = [*commands, then]
        data = _joined(commands)
        self._transport.write(data)
        self.writes += 1
        return group, reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(WireError("closed"))
