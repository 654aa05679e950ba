"""Idempotency keys across instances (a :class:`~omniroute.idempotency.keys.SharedKeys`).

The first request with a key claims it in this instance (its duplicates here share its
answer, as without Redis) and then in Redis, with the ``idem_claim`` script: one hash
per key (``<prefix>:idem:<hash of API key and idempotency key>``) holding the request's
fingerprint, its state and, once final, its answer. A request that finds the key
claimed by another instance waits for that instance's answer: its ask marks the key
as waited for, and the ``idem_settle`` script stores the answer and, for a key so
marked, publishes its name on ``<prefix>:idem`` (a key nobody waits for, nearly all of
them, is published to nobody); the waiter asks again when it hears it, or every
:data:`POLL` seconds, within ``total_timeout``. The settle goes with the request's other
writes after its answer (one round trip, :mod:`.batch`). The
answer is kept for ``idempotency_window`` (at least :data:`MIN_KEEP` seconds, so the
waiters find it); a failed call is kept that long as failed, so those waiting get an
error and not a second call.

The first ask may go with the request's other Redis work before dispatch
(:meth:`RedisKeys.prefetch_claim`, :mod:`.prefetch`); a claim taken there that the
request will not use (it is a duplicate of a request of this instance) is released
with ``idem_release``, which publishes the key like a settle (when it is waited for),
so that the instances waiting on it ask again at once.

A claim lives as long as a request may (``total_timeout`` and a minute): an instance
that dies while it holds one leaves its waiters a timeout, and the key free after it.
While Redis cannot be reached each instance shares answers only among its own requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from binascii import hexlify
from collections.abc import Callable

import orjson
from omniroute.config import Settings
from omniroute.errors import GatewayError, IdempotencyConflict, IdempotencyTimeout
from omniroute.idempotency.answer import SharedAnswer, State
from omniroute.idempotency.keys import WAIT, Finished, Scope, Wait
from omniroute.sharedstate import Pending, RequestBatch

from omniroute_redis.batch import Batch, Write
from omniroute_redis.link import Link, Unanswered, Unreachable
from omniroute_redis.prefetch import BEFORE, UNREACHABLE, Prefetch, Step
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import bulk, bulks

#: seconds between two asks while another instance's call is under way (a missed
#: notice costs at most this)
POLL = 0.25
#: seconds an answer is kept at least, whatever the window (the waiters must find it)
MIN_KEEP = 5.0
#: seconds a claim outlives the longest a request may take (``total_timeout``)
CLAIM_SLACK = 60.0
#: the settles' packed states, stream flags and statuses kept
PARTS_KEPT = 256


class RedisKeys:
    """Claims, waits and answers of idempotency keys in Redis (see the module)."""

    def __init__(self, link: Link, scripts: Scripts, batch: Batch,
                 settings: Callable[[], Settings]) -> None:
        self.link = link
        self.scripts = scripts
        self.batch = batch
        self.settings = settings
        self.channel = link.key("idem")
        self._heard: dict[str, asyncio.Event] = {}
        #: a key's Redis name up to its digest, and the bulk string's head of one
        self._prefix = link.key("idem", "")
        self._key_head = b"$%d\r\n%b" % (len(self._prefix) + 40, self._prefix.encode())
        #: the ``idem_settle`` command up to its key (3 + 1 key + 9 arguments)
        self._settle_head = b"*13\r\n" + bulks(("EVALSHA", scripts.sha["idem_settle"], 1))
        #: the claims this instance holds, by scope: the key's Redis name and the
        #: request's id, each as a bulk string (packed once, for the claim and the settle)
        self._mine: dict[Scope, tuple[bytes, bytes]] = {}
        self.waited = self.served = 0
        #: the last argument of the claim (its lease), packed once for each value it takes
        self._claim_tail: tuple[int, bytes] | None = None
        #: a settle's parts but its own (the request's id, the headers, the payload),
        #: packed, by their values (:meth:`settled`)
        self._settle_parts: dict[tuple[str, bool, int, bool | None, float],
                                 tuple[bytes, bytes, bytes]] = {}

    def key(self, scope: Scope) -> str:
        """The key's Redis name (made once a request, by its claim: the claim's step
        carries it, packed, to :meth:`claim` and the settle)."""
        return self._prefix + _digest(scope).decode()

    def packed_key(self, scope: Scope) -> bytes:
        """:meth:`key` as a bulk string (every name has the same length: the prefix's
        and 40 hexadecimal digits)."""
        return b"%b%b\r\n" % (self._key_head, _digest(scope))

    def _claim_args(self, fingerprint: bytes, request_id: str) -> list[object]:
        lease_ms = int((self.settings().total_timeout + CLAIM_SLACK) * 1000)
        return [fingerprint.hex(), request_id, lease_ms]

    def prefetch_claim(self, batch: RequestBatch, scope: Scope, fingerprint: bytes,
                       request_id: str, stream: bool) -> Step[object]:
        assert isinstance(batch, Prefetch)
        lease_ms = int((self.settings().total_timeout + CLAIM_SLACK) * 1000)
        tail = self._claim_tail
        if tail is None or tail[0] != lease_ms:
            tail = self._claim_tail = (lease_ms, bulk(b"%d" % lease_ms))
        raw = request_id.encode()
        rid = b"$%d\r\n%b\r\n" % (len(raw), raw)
        # (_digest's, in line: a call fewer a request; a fingerprint is a SHA-256, its
        # hexadecimal form 64 digits)
        digest = hexlify(_sha256(f"{scope[0]}\0{scope[1]}".encode()).digest()[:20])
        step = _Claim(self, b"%b%b\r\n" % (self._key_head, digest), request_id, rid,
                      b"$64\r\n%b\r\n%b%b" % (hexlify(fingerprint), rid, tail[1])
                      if len(fingerprint) == 32 else
                      b"$%d\r\n%b\r\n%b%b" % (2 * len(fingerprint), hexlify(fingerprint), rid,
                                               tail[1]))
        batch.steps.append(step)  # (Prefetch.add's, in line)
        return step

    async def claim(self, scope: Scope, fingerprint: bytes, request_id: str,
                    stream: bool, ahead: Pending[object] | None = None) -> Finished | bool | None:
        if type(ahead) is _Claim:  # (its key's name and the request's id, made for it)
            packed, rid = ahead.keys, ahead.rid
        else:
            packed, rid = self.packed_key(scope), bulk(request_id.encode())
        key = ""  # (its name: made when it is needed, :func:`_name`)
        #: set once another instance's call is under way (nearly every claim is this
        #: request's own: it needs no loop, no deadline, nothing to be told)
        loop: asyncio.AbstractEventLoop | None = None
        deadline = 0.0
        heard: asyncio.Event | None = None
        try:
            while True:
                if loop is not None:  # told when the answer is settled: listening before
                    key = key or _name(packed)
                    heard = self._heard.get(key)  # the ask (a notice after its answer is
                    if heard is None:  # not missed)
                        heard = self._heard[key] = asyncio.Event()
                if ahead is not None and ahead.ran:  # the first ask went with the batch
                    found, ahead = ahead.result(), None
                else:
                    key = key or _name(packed)
                    try:
                        found = await self.scripts.call(
                            self.link, "idem_claim", [key],
                            self._claim_args(fingerprint, request_id))
                    except Unanswered:  # it may have been claimed: released once Redis answers
                        self.batch.give_back([self.scripts.command(
                            "idem_release", [key], [request_id, self.channel])])
                        found = UNREACHABLE
                    except Unreachable:
                        found = UNREACHABLE
                decided = self._decide(scope, packed, rid, found)
                if decided is not WAIT:
                    return decided
                if loop is None:  # the first answer that says wait (a notice that came
                    # before this, between Redis's answer and here, is caught by the poll)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + self.settings().total_timeout
                    self.waited += 1
                    key = key or _name(packed)
                    heard = self._heard.setdefault(key, asyncio.Event())
                left = deadline - loop.time()
                if left <= 0:
                    raise IdempotencyTimeout("The first request with this idempotency key "
                                             "(on another instance) did not finish in time.")
                assert heard is not None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, POLL)):
                        await heard.wait()
        finally:  # nobody publishes a key no one waits for: its event is not left behind
            if heard is not None and self._heard.get(key) is heard:
                del self._heard[key]

    def claimed(self, scope: Scope, ahead: Pending[object]) -> Finished | bool | Wait | None:
        if type(ahead) is not _Claim:
            return WAIT  # (not this plugin's step: claim() asks)
        # (Step.result's and _Claim.read's, in line; and _decide's for the claim that is
        # this request's, as nearly every one is: three calls fewer a request)
        ahead.done = True
        found = ahead.raw
        if type(found) is list and found[0] == b"mine":
            self._mine[scope] = (ahead.keys, ahead.rid)
            return True
        return self._decide(scope, ahead.keys, ahead.rid, found)

    def _decide(self, scope: Scope, packed: bytes, rid: bytes,
                found: object) -> Finished | bool | Wait | None:
        """A claim's answer as :meth:`claim` returns it (or raises it); :data:`WAIT`: another
        instance's call is under way."""
        if found is UNREACHABLE:
            return None  # this instance decides alone
        assert isinstance(found, list)
        if found[0] == b"mine":  # (the reply, as the request path's connection reads it)
            self._mine[scope] = (packed, rid)
            return True
        kind = _text(found[0])
        if kind == "conflict":
            raise IdempotencyConflict(
                "This idempotency key was used by another request (a different body, "
                "method or path) within its window; use a new key for a new request.",
                param="Idempotency-Key")
        if kind == "done":
            self.served += 1
            return _finished(found[1:])
        if kind == "failed":
            raise GatewayError("The first request with this idempotency key failed (on "
                               "another instance of the gateway).", status=502,
                               code="bad_gateway", type="upstream_error")
        return WAIT

    def heard(self, data: bytes) -> None:
        """A key's answer was settled somewhere: its waiters here ask again."""
        event = self._heard.pop(_text(data), None)
        if event is not None:
            event.set()

    def settled(self, scope: Scope, answer: SharedAnswer) -> None:
        mine = self._mine.pop(scope, None)
        if mine is None:
            return
        packed, rid = mine
        window = self.settings().idempotency_window
        if answer.state is _DONE and not answer.flawed and answer.whole:
            payload = answer.body
            if payload is not None:
                done = True
            else:
                done = False
                payload = orjson.dumps([base64.b64encode(c).decode() for c in answer.chunks])
            state = "done"
        else:  # a failure (or an answer that cannot be replayed): waiters get an error
            state, done, payload = "failed", None, b""
        # its state, stream flag, status, kind, and after its payload how long it is kept
        # and the channel, packed once for each of their values (a handful)
        known = (state, answer.stream, answer.status, done, window)
        parts = self._settle_parts.get(known)
        if parts is None:
            keep_ms = int(max(window, MIN_KEEP) * 1000)
            if len(self._settle_parts) >= PARTS_KEPT:
                self._settle_parts.clear()
            kind = "json" if done else "chunks" if done is False else ""
            parts = self._settle_parts[known] = (
                bulks((state, int(answer.stream), answer.status)), bulk(kind.encode()),
                bulks((keep_ms, self.channel)))
        headers = orjson.dumps(answer.headers)
        self.batch.later(b"%b%b%b%b$%d\r\n%b\r\n%b$%d\r\n%b\r\n%b" % (
            self._settle_head, packed, rid, parts[0], len(headers), headers, parts[1],
            len(payload), payload, parts[2]))


class _Claim(Step[object]):
    """The claim (``idem_claim``) as a step of a request's batch: its raw answer is read
    by :meth:`RedisKeys.claim`."""

    name, nkeys, nargs, head = "idem_claim", 1, 3, "idem_claim 1 3"
    __slots__ = ("owner", "request_id", "rid")

    def __init__(self, keys: RedisKeys, key: bytes, request_id: str, rid: bytes,
                 args: bytes) -> None:
        """
        :param key: the key's name, as a bulk string; ``rid`` the request's id, as one.
        """
        # (Step.__init__'s, in line: a call fewer per step)
        self.keys, self.args, self.phase = key, args, BEFORE
        self.raw, self.ran, self.done = None, False, False
        self.owner, self.request_id, self.rid = keys, request_id, rid

    def read(self, raw: object) -> object:
        return raw

    def _release(self) -> Write:
        keys = self.owner
        return keys.scripts.command("idem_release", [_name(self.keys)],
                                    [self.request_id, keys.channel])

    def undo(self, raw: object) -> None:  # claimed, and this request will not call
        if isinstance(raw, list) and _text(raw[0]) == "mine":
            self.owner.batch.later(self._release())

    def forget(self) -> list[Write]:  # the answer was lost: released, if it is this request's
        return [self._release()]


def _digest(scope: Scope) -> bytes:
    """The part of a key's Redis name that is its own: a hash of the API key and the
    idempotency key, 40 hexadecimal digits (:meth:`RedisKeys.prefetch_claim` makes it in
    line)."""
    return hexlify(_sha256(f"{scope[0]}\0{scope[1]}".encode()).digest()[:20])


_sha256 = hashlib.sha256
#: :attr:`State.DONE` (a module global: one lookup, not a global and an attribute's)
_DONE = State.DONE


def _name(packed: bytes) -> str:
    """A key's name from its bulk string."""
    return packed[packed.index(b"\n") + 1:-2].decode()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _finished(fields: list[object]) -> Finished:
    request_id, stream, status, headers, kind, payload = fields
    assert isinstance(payload, bytes) and isinstance(headers, bytes)
    chunks: tuple[bytes, ...] = ()
    body: bytes | None = payload
    if _text(kind) == "chunks":
        chunks = tuple(base64.b64decode(c) for c in orjson.loads(payload))
        body = None
    return Finished(_text(request_id), _text(stream) == "1", int(_text(status)),
                    orjson.loads(headers), body, chunks)
