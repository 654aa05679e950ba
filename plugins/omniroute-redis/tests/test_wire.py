"""The request path's own Redis connection, on both event loops the gateway runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from omniroute_redis.link import Link, Unreachable
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import ErrorReply, NoScript, Wire, WireError, _encode, encode


def test_commands_are_encoded_as_arrays_of_bulk_strings() -> None:
    expected = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n3\r\n$3\r\n0.5\r\n"
    assert _encode(("SET", "k", b"v\r\n", 3, 0.5)) == expected
    # hiredis's packer (when installed) makes the same bytes, ours takes what it does not
    for command in [("SET", "k", b"v\r\n", 3, 0.5), ("EVALSHA", "a" * 40, 2, "k1", "k2", "",
                                                    1.5e-07, -3, 2**70, "\u00e9", 360.0),
                    ("X", True, None, bytearray(b"ab"), memoryview(b"cd"))]:
        assert encode(command) == _encode(command)


async def conversation(url: str, ours: bool = False) -> None:
    """:param ours: parse with this module's parser even when hiredis is installed."""
    wire = await Wire.open(url)
    if ours:
        wire._reader = None
    try:
        assert await wire.call("PING") == b"PONG"
        # pipelined: every reply reaches its own caller, in order
        replies = await asyncio.gather(*wire.send_many(
            [("SET", "wire:k", "v"), ("GET", "wire:k"), ("GET", "wire:missing"),
             ("INCRBY", "wire:n", 5), ("EVAL", "return {'a', 1, {'b'}}", 0)]))
        assert replies == [b"OK", b"v", None, 5, [b"a", 1, [b"b"]]]
        # a group: one future for its replies (an error reply in place), then a command
        group, then = wire.send_group([("GET", "wire:k"), ("INCR", "wire:k"),
                                       ("EVALSHA", "0" * 40, 0)], ("GET", "wire:missing"))
        found = await group
        assert found[0] == b"v" and isinstance(found[1], ErrorReply)
        assert isinstance(found[2], NoScript)
        assert then is not None and await then is None
        with pytest.raises(ErrorReply, match=r"WRONGTYPE|not an integer"):
            await wire.call("INCR", "wire:k")
        with pytest.raises(NoScript):
            await wire.call("EVALSHA", "0" * 40, 0)
        big = b"x" * 300_000  # a reply that arrives in many reads
        await wire.call("SET", "wire:big", big)
        assert await wire.call("GET", "wire:big") == big
        # a caller that stopped waiting keeps its place: the next reply is the next one's
        slow = wire.send("GET", "wire:big")
        slow.cancel()
        assert await wire.call("GET", "wire:k") == b"v"
        # ... and one adopted in its place gets it (a cancelled caller's reply, read for it)
        cancelled = wire.send("GET", "wire:k")
        cancelled.cancel()
        adopted = wire.adopt(cancelled)
        assert adopted is not None and await adopted == b"v"
        assert wire.adopt(cancelled) is None  # no longer waiting
    finally:
        wire.close()
    with pytest.raises(WireError):
        wire.send("PING")


async def test_a_pipelined_conversation_on_asyncio(redis_url: str) -> None:
    await conversation(redis_url)


async def test_a_pipelined_conversation_parsed_by_this_module(redis_url: str) -> None:
    await conversation(redis_url, ours=True)


def test_a_pipelined_conversation_on_uvloop(redis_url: str) -> None:
    uvloop.run(conversation(redis_url))


async def test_a_script_runs_by_its_sha_and_is_loaded_again_when_forgotten(
        redis_url: str) -> None:
    link = Link(redis_url, timeout=lambda: 1.0)
    scripts = Scripts()
    try:
        assert await scripts.call(link, "take", ["w:slots", "w:starts"], ["m", 1, "", 30]) == b"0"
        await link.command("SCRIPT", "FLUSH")
        assert await scripts.call(link, "take", ["w:slots", "w:starts"], ["n", 1, "", 30]) == b"c"
    finally:
        await link.close()


async def test_an_unreachable_server_is_told_once_and_fails_fast(unused_tcp_port: int) -> None:
    link = Link(f"redis://127.0.0.1:{unused_tcp_port}/0", timeout=lambda: 0.5)
    try:
        with pytest.raises(Unreachable):
            await link.command("PING")
        assert not link.up and link.outages == 1
        with pytest.raises(Unreachable):  # down: no new attempt, no wait
            await link.commands([("PING",)])
        assert link.health()["ok"] is False
    finally:
        await link.close()


class _Transport:
    """What a wire writes (no socket: the test feeds the replies itself)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("ours", [False, True])
async def test_a_group_s_replies_split_across_reads_reach_their_waiters(ours: bool) -> None:
    """A group waits once, for all of its replies: those read so far stay with it while the
    rest is on its way (in any cut of the bytes), and the replies after it are the next
    waiters'; a reply that equals False (``:0``) is a reply, not the end of the buffer."""
    replies = b":0\r\n$-1\r\n-ERR one\r\n*2\r\n$1\r\na\r\n:0\r\n+OK\r\n:7\r\n"
    for cut in range(1, len(replies)):
        wire = Wire()
        if ours:
            wire._reader = None
        wire.connection_made(_Transport())  # type: ignore[arg-type]
        group, then = wire.send_group([("A",), ("B",), ("C",), ("D",), ("E",)], ("F",))
        last = wire.send("G")
        wire.data_received(replies[:cut])
        wire.data_received(replies[cut:])
        found = await group
        assert found[:2] == [0, None] and isinstance(found[2], ErrorReply)
        assert found[3:] == [[b"a", 0], b"OK"]
        assert then is not None and await then == 7
        assert not last.done()
        wire.data_received(b":1\r\n")
        assert await last == 1
        wire.data_received(b":2\r\n")  # nobody asked for it: the connection is broken
        assert wire.broken is not None


async def test_an_empty_group_is_answered_at_once() -> None:
    wire = Wire()
    wire.connection_made(_Transport())  # type: ignore[arg-type]
    group, then = wire.send_group([], ("PING",))
    assert await group == []
    wire.data_received(b"+PONG\r\n")
    assert then is not None and await then == b"PONG"


async def test_the_watchdog_expires_the_replies_that_did_not_come_in_time() -> None:
    """One timer bounds every reply awaited: a late one fails with a ``TimeoutError``,
    those that came are let go at once (the last one in: every one before it is), and a
    cancelled one does not stand for the replies before it."""
    link = Link("redis://127.0.0.1:1/0", timeout=lambda: 0.05)
    loop = asyncio.get_running_loop()
    try:
        came = [loop.create_future() for _ in range(3)]
        for reply in came:
            link.bound(reply)
        for reply in came:
            reply.set_result(b"ok")
        await asyncio.sleep(0.1)
        assert not link._deadlines and link._watchdog is None
        late, cancelled = loop.create_future(), loop.create_future()
        link.bound(late)
        link.bound(cancelled)
        cancelled.cancel()
        await asyncio.sleep(0.1)
        assert isinstance(late.exception(), TimeoutError)
        assert not link._deadlines
    finally:
        await link.close()


async def test_the_watchdog_reads_the_timeout_when_it_arms_not_once_a_reply() -> None:
    """A reply is kept with the time it was sent: the ``state_timeout`` setting (a live
    one, read through two calls) is read when the watchdog arms or looks, so a thousand
    replies awaited at once read it once; a late one still fails in time."""
    reads = 0

    def timeout() -> float:
        nonlocal reads
        reads += 1
        return 0.05

    link = Link("redis://127.0.0.1:1/0", timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        replies = [loop.create_future() for _ in range(1000)]
        for reply in replies:
            link.bound(reply)
        assert reads == 1
        for reply in replies[:-1]:
            reply.set_result(b"ok")
        await asyncio.sleep(0.1)
        assert isinstance(replies[-1].exception(), TimeoutError)
        assert reads <= 3 and not link._deadlines  # (a look, and one more if it came early)
    finally:
        await link.close()


def test_the_admit_command_s_fixed_parts_are_packed_once_per_sequence_of_steps() -> None:
    """``admit``'s head (EVALSHA, the SHA, its counts) and its first argument (the steps'
    heads), packed once for a sequence of steps, make with a request's keys and arguments
    the very command packed whole."""
    scripts = Scripts()
    heads = ("take 2 4", "reserve 2 9")
    keys, args = (b"k1", b"k2", b"k3", b"k4"), tuple(b"a%d" % i for i in range(13))
    head, first = scripts.admit_parts(heads, len(keys), len(args))
    assert scripts.admits[heads] == (head, first)
    whole = encode(("EVALSHA", scripts.sha["admit"], len(keys), *keys, " ".join(heads), *args))
    assert head + encode(keys)[4:] + first + encode(args)[5:] == whole
