"""The resilience state-store seam, proven with a second store.

:class:`DictState` keeps the local view the protocol asks for and writes every
announced record, as JSON with wall-clock times, into a ``backend`` dict (what
a Redis store would hold); ``pull()`` applies the backend to the local records
in place. The facade, strategy and session scenarios run again here on it
(collected from their own modules), with checks after each that no state lives
outside the store and that every record survives the trip through JSON. Then
two gateways' resilience share one backend: a cooldown, a terminal state, an
open breaker and a reset learned by one are honoured by the other.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import orjson
import pytest
import test_resilience_core
import test_resilience_sessions
import test_resilience_strategies

from omniroute.config import Settings
from omniroute.errors import CircuitOpen
from omniroute.resilience import (
    BreakerState,
    Clock,
    ConnectionStats,
    LimitState,
    ManualClock,
    Resilience,
)
from omniroute.resilience import core as resilience_core
from omniroute.resilience.state import TIME_FIELDS, Table

status, target = test_resilience_core.status, test_resilience_core.target

# the facade, session and strategy scenarios, collected again in this module (so on DictState)
for _module in (test_resilience_core, test_resilience_sessions, test_resilience_strategies):
    globals().update({name: value for name, value in vars(_module).items()
                      if name.startswith("test_") and callable(value)})

RECORDS: dict[str, Any] = {
    "connections": ConnectionStats, "breakers": BreakerState, "limits": LimitState}


class DictState:
    """A second :class:`StateStore`: the local view, plus JSON records in a shared dict.

    Last writer wins per record; enough to show that the state is plain data
    that can travel, and that the modules keep all of it in the store.
    """

    #: limits stay this process's own (no atomic take)
    slots = None

    def __init__(self, backend: dict[str, bytes] | None = None,
                 clock: Clock | None = None) -> None:
        self.connections: dict[str, ConnectionStats] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.limits: dict[str, LimitState] = {}
        self.sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.backend: dict[str, bytes] = {} if backend is None else backend
        self.clock = clock
        self.calls: list[tuple[Table, str]] = []

    def _offset(self) -> float:
        """Monotonic -> wall seconds (monotonic clocks of two hosts do not agree)."""
        return 0.0 if self.clock is None else self.clock.time() - self.clock.monotonic()

    def changed(self, table: Table, key: str) -> None:
        self.calls.append((table, key))
        record = getattr(self, table).get(key)
        name = f"{table}:{key}"
        if record is None:
            self.backend.pop(name, None)
        else:
            self.backend[name] = orjson.dumps(self._encode(table, record))

    def _encode(self, table: Table, record: Any) -> dict[str, Any]:
        if table == "sessions":
            data = {"connection_id": record[0], "expires": record[1]}
        else:
            data = {f.name: getattr(record, f.name) for f in fields(record)}
        offset = self._offset()
        for name in TIME_FIELDS[table]:
            value = data[name]
            if isinstance(value, deque):
                data[name] = [t + offset for t in value]
            elif value is not None:
                data[name] = value + offset
        return data

    def pull(self) -> None:
        """Apply the backend to the local view, changing the records in place."""
        offset = self._offset()
        for name, raw in self.backend.items():
            table, key = name.split(":", 1)
            data = orjson.loads(raw)
            for field_name in TIME_FIELDS[table]:  # type: ignore[index]
                value = data[field_name]
                if isinstance(value, list):
                    data[field_name] = deque(t - offset for t in value)
                elif value is not None:
                    data[field_name] = value - offset
            local = getattr(self, table)
            if table == "sessions":
                local[key] = (data["connection_id"], data["expires"])
                continue
            record = local.get(key)
            if record is None:
                local[key] = RECORDS[table](**data)
                continue
            for field_name, value in data.items():
                if isinstance(value, deque):
                    getattr(record, field_name).clear()
                    getattr(record, field_name).extend(value)
                else:
                    setattr(record, field_name, value)


# ------------------------------------------------------------------ the scenarios again

@pytest.fixture(autouse=True)
def dict_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Resilience]]:
    """Every Resilience built in a test of this module keeps its state in a DictState;
    afterwards: nothing outside the store, and every record round-trips through JSON."""
    created: list[Resilience] = []
    original = Resilience.__init__

    def init(self: Resilience, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(resilience_core, "MemoryState", DictState)
    monkeypatch.setattr(Resilience, "__init__", init)
    yield created
    for r in created:
        state = r.state
        if not isinstance(state, DictState):
            continue  # a test that passed its own store
        assert r._stats_by_id is state.connections and r.sessions._items is state.sessions
        for key, breaker in r._breakers.items():
            assert breaker.data is state.breakers[key]
        for cid, limiter in r._limiters.items():
            assert limiter.data is state.limits[cid]
        state.clock = r.clock
        copy = DictState({}, r.clock)
        state.backend = copy.backend
        for table in ("connections", "breakers", "limits", "sessions"):
            for key in list(getattr(state, table)):
                state.changed(table, key)  # type: ignore[arg-type]
        copy.pull()
        for table in ("connections", "breakers", "limits", "sessions"):
            mine, theirs = getattr(state, table), getattr(copy, table)
            assert list(theirs) == list(mine)
            for key, record in mine.items():
                assert _same(_plain(theirs[key]), _plain(record)), (table, key)


def _plain(record: Any) -> Any:
    if isinstance(record, tuple):
        return list(record)
    return [list(v) if isinstance(v := getattr(record, f.name), deque) else v
            for f in fields(record)]


def _same(a: Any, b: Any) -> bool:
    """Equal, floats within a microsecond (times went through wall-clock seconds)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=1e-6)
    return bool(a == b) and type(a) is type(b)


def test_the_rerun_really_uses_the_second_store(dict_state: list[Resilience]) -> None:
    r = Resilience(Settings(), clock=ManualClock())
    assert isinstance(r.state, DictState) and dict_state == [r]


# ------------------------------------------------------------------ announcements

async def test_a_success_on_a_healthy_connection_announces_nothing() -> None:
    state = DictState()
    r = Resilience(Settings(), clock=ManualClock(), state=state)
    one = target("a")
    for _ in range(3):
        plan = r.plan([one])
        async with r.attempt(plan.targets[0], session_id="s") as attempt:
            attempt.first_byte()
    assert state.calls == []
    assert state.connections["a"].successes == 3 and state.sessions["s"][0] == "a"


async def test_transitions_are_announced() -> None:
    state = DictState()
    r = Resilience(Settings(breaker_threshold=2), clock=ManualClock(), state=state)
    one = target("a")
    r.record_failure(one, status(500))
    assert state.calls == [("connections", "a"), ("breakers", "up")]
    r.record_success(one)  # ends the streak and the cooldown
    assert state.calls[2:] == [("connections", "a"), ("breakers", "up")]
    r.record_failure(one, status(500))
    r.record_failure(one, status(500))  # opens the breaker
    state.calls.clear()
    r.clock.advance(60)  # type: ignore[attr-defined]
    async with r.attempt(one):  # a half-open trial, then the success closes it
        pass
    assert ("breakers", "up") in state.calls and state.breakers["up"].opened_at is None
    state.calls.clear()
    r.reset("a")
    assert state.calls == [("connections", "a"), ("breakers", "up")]
    state.calls.clear()
    r.retain(set())
    assert state.calls == [("connections", "a")] and "a" not in state.connections


# ------------------------------------------------------------------ two instances, one backend

def pair(**settings: Any) -> tuple[Resilience, Resilience, DictState, DictState]:
    """Two gateways' resilience over one backend; their monotonic clocks disagree."""
    backend: dict[str, bytes] = {}
    clock_a = ManualClock(start=1000.0, wall=1_700_000_000.0)
    clock_b = ManualClock(start=50.0, wall=1_700_000_000.0)
    a_state, b_state = DictState(backend, clock_a), DictState(backend, clock_b)
    a = Resilience(Settings(**settings), clock=clock_a, rng=random.Random(1), state=a_state)
    b = Resilience(Settings(**settings), clock=clock_b, rng=random.Random(1), state=b_state)
    return a, b, a_state, b_state


def test_a_cooldown_learned_by_one_instance_is_honoured_by_the_other() -> None:
    a, b, _, b_state = pair()
    first, second = target("c1"), target("c2")
    a.record_failure(first, status(429, {"Retry-After": "30"}))
    assert b.plan([first, second]).targets == (first, second)  # not told yet
    b_state.pull()
    plan = b.plan([first, second])
    assert plan.targets == (second,) and plan.skipped == ((first, "cooling"),)
    assert b.soonest_available([first]) == pytest.approx(30.0)
    b.clock.advance(30)  # type: ignore[attr-defined]
    assert b.plan([first, second]).targets == (first, second)


def test_a_terminal_state_and_a_reset_travel() -> None:
    a, b, a_state, b_state = pair()
    first, second = target("c1"), target("c2")
    a.record_failure(first, status(402))  # billing exhausted: out of service until a reset
    b_state.pull()
    assert b.plan([first, second]).skipped == ((first, "terminal"),)
    a.reset("c1")
    b_state.pull()
    assert b.plan([first, second]).targets == (first, second)
    assert a_state.backend is b_state.backend


async def test_an_open_breaker_travels_and_closes_for_both() -> None:
    a, b, a_state, b_state = pair(breaker_threshold=2, breaker_reset=10.0)
    one = target("c1")
    b.record_success(one)  # b holds the breaker's record already: pull must update it in place
    a.record_failure(one, status(503))
    a.record_failure(one, status(503))
    b_state.pull()
    with pytest.raises(CircuitOpen):
        async with b.attempt(one):
            pass
    b.clock.advance(10)  # type: ignore[attr-defined]
    async with b.attempt(one):  # the half-open trial succeeds on b ...
        pass
    a_state.pull()  # ... and a learns the breaker is closed
    assert a.snapshot()["breakers"][0]["state"] == "closed"
