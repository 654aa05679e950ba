"""One request's Redis work before dispatch, in one round trip (its
:class:`~omniroute.sharedstate.RequestBatch`).

The pipeline asks the stages what they will need (``StageRun.prefetch``); each
part queues its step here instead of running its own script:

* the API key's slot (``take``) and its budget reservation (``reserve``);
* the cache lookup of the ``redis`` backend (``cache_get``);
* the ``Idempotency-Key`` claim (``idem_claim``);
* the slot of the route's only target, when its connection is limited (``take``).

:meth:`Prefetch.send` runs them as one ``admit`` script (:mod:`.scripts`; a lone
step as its own script): one ``EVALSHA``, one round trip, in the order the stages
would have asked (the before-routing steps, then the reservation, then the
connection's slot). Where
an answer makes the rest moot the script stops, so what a request would not
have taken is never taken: a refused key slot stops everything after it; a
cache hit stops the claim, the reservation and the connection's slot; a claim
that is not this request's (another request's call, its finished answer, a
conflict) stops the reservation and the slot; a refused reservation stops the
slot. Each stage then reads its own :class:`Step`; one that did not run is
done the usual way, with its own round trip, if the stage still needs it (the
claim's wait for another instance, for example).

A step that ran and is not read (the route changed between the prefetch and
``routed``, the cache answered from the memory in front of Redis, a duplicate
of a request of this instance) is undone: its slot given back, its reservation
dropped, its claim released (and published, for the instances waiting on it).
The undo is queued with the writes that follow answers (:mod:`.batch`), at
once when the stage knows, or when the request is over (:meth:`Prefetch.release`,
which also sends the writes queued for the request's end: all of them go in one
round trip).

While Redis cannot be reached every step answers as its own call would then:
the part decides with this instance's own numbers. A request whose client leaves
while the batch is on its way gives back what it took once the answer is in.

When the answer is lost once the batch was sent (it came later than
``state_timeout``, the connection broke) or the script failed partway (``OOM``
under ``noeviction``, ``READONLY`` after a failover, ``WRONGTYPE``), Redis may
have run some steps: every step answers as while Redis cannot be reached (the
cache's lookup a miss), and each step's blind undo (it names only this request's
own slot member, reservation or claim, so it is harmless where the step never
ran) is queued with the writes that follow answers, kept until Redis answers
again (:meth:`Batch.give_back <.batch.Batch.give_back>`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from omniroute_redis.link import Link, Unanswered, Unreachable
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import ErrorReply, NoScript

if TYPE_CHECKING:
    from omniroute_redis.batch import Batch, Write
    from omniroute_redis.keylease import Granted, Held
    from omniroute_redis.leases import ConnectionSlots, LeasedSlot

T = TypeVar("T")

#: a step's raw answer while Redis cannot be reached
UNREACHABLE: Any = object()

#: the order steps run in, whatever order the stages queued them: before routing (the
#: key's slot, the cache, the claim), the reservation (routed), the connection's slot
BEFORE, ROUTED, CALL = 0, 1, 2


class Step(Generic[T]):
    """One script of the ``admit`` batch; its answer once the batch was sent
    (a :class:`~omniroute.sharedstate.Pending`).

    A kind of step is a subclass (a key's or a connection's slot, a reservation, a
    claim, a lookup): what it does with its answer are its methods, not closures made
    for each request (a request's five steps made some twenty closures and their cells).

    :param keys: its keys, packed (:func:`~omniroute_redis.wire.bulks`), and ``nkeys``
        their count; ``args`` and ``nargs`` the same of its arguments.
    """

    #: its script, its counts of keys and arguments, and its part of the ``admit``
    #: script's first argument (``name nkeys nargs``): class attributes of a kind whose
    #: counts do not change (set once, not per request), slots of one whose do
    name: str = ""
    nkeys: int = 0
    nargs: int = 0
    head: str = ""
    #: its kind has a :meth:`took` of its own (the others' answers are stored without a
    #: call: a lookup, a claim, a reservation)
    tells: bool = False

    __slots__ = ("args", "done", "keys", "phase", "ran", "raw")

    def __init__(self, keys: bytes, args: bytes, *, phase: int = BEFORE) -> None:
        self.keys, self.args, self.phase = keys, args, phase
        self.raw: Any = None
        self.ran = False
        self.done = False  # read, or undone

    def read(self, raw: Any) -> T:
        """The raw answer (or :data:`UNREACHABLE`) as the part's own call returns it (it
        may raise what that call raises)."""
        raise NotImplementedError

    def took(self) -> None:
        """Its answer is in (:attr:`raw`), before anyone reads it."""

    def undo(self, raw: Any) -> None:
        """It ran and is not read: queue what gives back what ``raw`` says it took
        (nothing, for a lookup)."""

    def forget(self) -> list[Write]:
        """The writes that give back what it may have taken when its answer was lost (a
        blind undo: each names only this request's own member or id, so it is harmless
        where the step never ran); none: it takes nothing."""
        return []

    def result(self) -> T:
        self.done = True
        return self.read(self.raw)

    def release(self) -> None:
        if self.ran and not self.done:
            self.done = True
            if self.raw is not UNREACHABLE:
                self.undo(self.raw)


class Prefetch:
    """The steps of one request (see the module docstring)."""

    __slots__ = ("granted", "link", "open", "scripts", "slots", "steps", "writes")

    def __init__(self, link: Link, scripts: Scripts, slots: ConnectionSlots,
                 writes: Batch) -> None:
        """
        :param writes: the writes that follow answers: :meth:`release` sends them.
        """
        self.link = link
        self.scripts = scripts
        self.slots = slots
        self.writes = writes
        self.steps: list[Step[Any]] = []
        #: what it took from a key's or a connection's lease (no step: released with it
        #: when never read); appended to in place (a C call, no method of this class)
        self.granted: list[LeasedSlot | Granted | Held] = []
        #: not released yet (:attr:`Batch.open <.batch.Batch.open>` counts it)
        self.open = True
        writes.open += 1

    def add(self, step: Step[T]) -> Step[T]:
        self.steps.append(step)
        return step

    def take_slot(self, name: str, max_concurrency: int | None, rpm: int | None) -> None:
        self.slots.prefetch(self, name, max_concurrency, rpm)

    def send(self) -> Awaitable[None] | None:
        """The round trip of the steps queued (None: none was, nothing to wait for)."""
        return self._send() if self.steps else None

    async def _send(self) -> None:
        """One ``EVALSHA`` of the ``admit`` script (a second after Redis forgot its scripts),
        with the writes queued after earlier answers in front of it, in the same write to
        the socket (:meth:`Batch.ride <.batch.Batch.ride>`). Never raises for Redis: a
        lost answer or a script's error answers every step as while Redis cannot be
        reached, and queues the steps' blind undos."""
        steps = self.steps
        scripts = self.scripts
        if len(steps) == 1:  # its own script: nothing to dispatch
            only = steps[0]
            name = only.name
            packed = scripts.packed(name, only.keys, only.nkeys, only.args, only.nargs)
        else:
            steps.sort(key=_phase)
            name = "admit"
            # (the command up to its keys, and its first argument, packed once per sequence
            # of steps: Scripts.admit_parts)
            shape = tuple(map(_head, steps))
            parts = scripts.admits.get(shape)
            if parts is None:
                parts = scripts.admit_parts(shape, sum(map(_nkeys, steps)),
                                            sum(map(_nargs, steps)))
            packed = b"".join((parts[0], *map(_keys, steps), parts[1], *map(_args, steps)))
        link = self.link
        try:
            try:
                # (the reply awaited here, not in Link.command: a coroutine fewer for the
                # answer to pass through)
                reply = link.post(packed, self.writes)
                if reply is None:  # the connection is not open yet: command opens it
                    answer = await link.command(packed, late=self._late(), riders=self.writes)
                else:
                    try:
                        answer = await reply
                    except asyncio.CancelledError:
                        link.abandoned(reply, self._late())
                        raise
                    except (TimeoutError, ConnectionError) as exc:  # (late; the wire broke)
                        link.lost(exc)
                        raise Unanswered(str(exc)) from exc
            except NoScript:  # Redis forgot its scripts (it restarted): loaded, sent again
                await scripts.load_one(link, name)
                answer = await link.command(packed, late=self._late())
            answers = [answer] if len(steps) == 1 else answer
        except Unanswered:  # sent, and the answer is lost: what Redis took is unknown
            answers = [UNREACHABLE] * len(steps)
            self._forget()
        except Unreachable:  # nothing was sent
            answers = [UNREACHABLE] * len(steps)
        except ErrorReply as exc:  # a step failed in Redis: the steps before it took theirs
            link.errored(exc)
            answers = [UNREACHABLE] * len(steps)
            self._forget()
        for step, raw in zip(steps, answers, strict=False):  # (_answer's, in line)
            step.raw, step.ran = raw, True
            if step.tells:
                step.took()

    def _answer(self, answers: list[Any]) -> None:
        for step, raw in zip(self.steps, answers, strict=False):  # the rest did not run
            step.raw, step.ran = raw, True  # (in line: a call fewer a step)
            if step.tells:
                step.took()

    def _late(self) -> Callable[[Any], None]:
        """What gets the answer when the request is gone before it came (made only then)."""
        return self._abandoned_one if len(self.steps) == 1 else self._abandoned

    def _abandoned_one(self, answer: Any) -> None:
        self._abandoned(answer if isinstance(answer, BaseException) else [answer])

    def _abandoned(self, answers: list[Any] | BaseException) -> None:
        """The request was gone (its client left) before the answer came: nobody reads
        it, so what it took is given back (blindly, when the answer is lost or an error)."""
        if isinstance(answers, BaseException):
            if isinstance(answers, ErrorReply) and not isinstance(answers, NoScript):
                self.link.errored(answers)  # (NOSCRIPT: not run; the caller was gone)
            self._forget()
            self.writes.kick()
            return
        self._answer(answers)
        self.release()

    def _forget(self) -> None:
        """The answer is lost: every step's blind undo, queued until Redis answers."""
        writes = [w for step in self.steps for w in step.forget()]
        if writes:
            self.writes.give_back(writes)

    def release(self) -> None:
        """The request is over: undo what ran and was not read, and send the writes
        queued for its end (its slots given back, its session bound) now."""
        if self.open:
            self.open = False
            self.writes.open -= 1
        for taken in self.granted:  # (read, as nearly always: no call)
            if not taken.done:
                taken.release()
        steps = self.steps
        if not all(map(_done, steps)):  # (each one read, as nearly always: no Python a step)
            for step in steps:
                if step.ran and not step.done:
                    step.release()
        self.writes.kick()


#: a step's phase, the order it runs in, and its parts of the ``admit`` command (C, not
#: Python code a step)
_phase = attrgetter("phase")
_head, _keys, _nkeys = attrgetter("head"), attrgetter("keys"), attrgetter("nkeys")
_args, _nargs = attrgetter("args"), attrgetter("nargs")
_done = attrgetter("done")
