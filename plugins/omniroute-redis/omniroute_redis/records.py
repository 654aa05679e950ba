"""Resilience records on the wire: what one instance changed, and the shared record applied.

The resilience modules change their records in place (:mod:`omniroute.resilience.state`).
To share them without losing anyone's update, an instance never sends its
record to overwrite Redis's: it sends what changed since the shared record it
last saw (its **base**), as an operation the ``merge`` script applies
atomically (:mod:`.scripts`):

* counters (requests, successes, failures, times outrun) are **added**;
* times of last use and of the last error take the **latest**;
* the moving averages (time to first token, error rate) move by this instance's
  change (an approximation of interleaving the samples, exact when the others
  were idle meanwhile);
* the failure streak, the cooldown and the terminal state: a streak that
  ended here (a success, an operator reset) **sets** them; a streak that grew
  here **adds** its failures, keeps the **later** cooldown end and a terminal
  reason;
* a breaker's opening or closing **sets** its state (and bumps its
  generation); a half-open trial taken or given back **adds** to the trials.

Applying a shared record ``g`` to a local one keeps what the instance changed
since the reference snapshot that ``g`` already includes, so nothing counts
twice and nothing is lost. Local times are the clock's monotonic seconds, the
wire's are epoch seconds (``offset`` converts). Per-model first-byte times (for
hedging) and requests in flight stay each instance's own.
"""

from __future__ import annotations

from typing import Any

from omniroute.resilience import BreakerState, ConnectionStats

Snap = dict[str, Any]

ADDED = ("total_requests", "successes", "failures", "outrun")
LATEST = ("last_used_at", "last_error_at")
AVERAGES = ("ttft", "error_rate")

ZERO_CONNECTION: Snap = {
    **dict.fromkeys(ADDED, 0), **dict.fromkeys(LATEST), "ttft": None, "error_rate": 0.0,
    "consecutive_failures": 0, "cooling_until": None, "terminal_reason": None,
    "last_error": None}
ZERO_BREAKER: Snap = {"failures": 0, "opened_at": None, "trials": 0, "times_opened": 0,
                      "half_open": False, "gen": 0}


def _wall(t: float | None, offset: float) -> float | None:
    return None if t is None else t + offset


def _local(t: Any, offset: float) -> float | None:
    return None if t is None else float(t) - offset


def _moved(a: float | None, b: float | None) -> bool:
    """Two times differ by more than the noise of converting them to epoch and back."""
    return (a is None) != (b is None) or (a is not None and b is not None and abs(a - b) > 1e-3)


# ---------------------------------------------------------------- connections

def connection_snap(stats: ConnectionStats) -> Snap:
    return {"total_requests": stats.total_requests, "successes": stats.successes,
            "failures": stats.failures, "outrun": stats.outrun,
            "last_used_at": stats.last_used_at, "last_error_at": stats.last_error_at,
            "ttft": stats.ttft, "error_rate": stats.error_rate,
            "consecutive_failures": stats.consecutive_failures,
            "cooling_until": stats.cooling_until, "terminal_reason": stats.terminal_reason,
            "last_error": stats.last_error}


def connection_wire(snap: Snap, offset: float) -> Snap:
    """A local snapshot as the wire holds it (epoch times)."""
    out = dict(snap)
    for name in (*LATEST, "cooling_until"):
        out[name] = _wall(snap[name], offset)
    return out


def connection_op(cur: Snap, base: Snap | None, offset: float) -> tuple[Snap, bool]:
    """The change from ``base`` to ``cur`` as a ``merge`` operation, and whether it is a
    transition other instances must hear of at once (a streak, a rest, a terminal state)."""
    b = base or ZERO_CONNECTION
    op: Snap = {"full": connection_wire(cur, offset)}
    add = {n: cur[n] - b[n] for n in ADDED if cur[n] != b[n]}
    latest = {n: cur[n] + offset for n in LATEST if cur[n] is not None and _moved(cur[n], b[n])}
    ewma = {n: cur[n] - b[n] if b[n] is not None else 0.0 for n in AVERAGES
            if cur[n] is not None and cur[n] != b[n]}
    put: Snap = {}
    streak, cooling, terminal = (cur["consecutive_failures"], cur["cooling_until"],
                                 cur["terminal_reason"])
    ended = (streak < b["consecutive_failures"]
             or (b["cooling_until"] is not None and cooling is None)
             or (b["terminal_reason"] is not None and terminal is None))
    urgent = ended
    if ended:
        put.update(consecutive_failures=streak, cooling_until=_wall(cooling, offset),
                   terminal_reason=terminal)
    else:
        if streak != b["consecutive_failures"]:
            add["consecutive_failures"] = streak - b["consecutive_failures"]
            urgent = True
        if cooling is not None and _moved(cooling, b["cooling_until"]):
            latest["cooling_until"] = cooling + offset
            urgent = True
        if terminal is not None and terminal != b["terminal_reason"]:
            put["terminal_reason"] = terminal
            urgent = True
    if _moved(cur["last_error_at"], b["last_error_at"]):
        put["last_error"] = cur["last_error"]
    for name, part in (("add", add), ("max", latest), ("ewma", ewma), ("set", put)):
        if part:
            op[name] = part
    return op, urgent


def apply_connection(stats: ConnectionStats, g: Snap, ref: Snap | None, *, keep: bool,
                     offset: float) -> Snap:
    """Apply the shared record ``g`` in place, keeping what changed here since ``ref`` (the
    snapshot ``g`` already includes); ``keep``: a transition of this instance is not sent
    yet, so its streak and rest stay. Returns the new base (``g`` in local times)."""
    cur = connection_snap(stats)
    r = ref or ZERO_CONNECTION
    for name in ADDED:
        setattr(stats, name, max(0, int(g.get(name) or 0) + cur[name] - r[name]))
    for name in LATEST:
        theirs = _local(g.get(name), offset)
        mine = cur[name]
        setattr(stats, name, theirs if mine is None else mine if theirs is None
                else max(mine, theirs))
    for name in AVERAGES:
        theirs = g.get(name)
        if theirs is None:
            continue
        if cur[name] is None or r[name] is None:
            setattr(stats, name, float(theirs))
        else:
            setattr(stats, name, max(0.0, float(theirs) + cur[name] - r[name]))
    stats.error_rate = min(1.0, stats.error_rate)
    if not keep:
        stats.consecutive_failures = int(g.get("consecutive_failures") or 0)
        stats.cooling_until = _local(g.get("cooling_until"), offset)
        stats.terminal_reason = g.get("terminal_reason")
        stats.last_error = g.get("last_error")
    base = {name: g.get(name, ZERO_CONNECTION[name]) for name in ZERO_CONNECTION}
    for name in (*LATEST, "cooling_until"):
        base[name] = _local(base[name], offset)
    return base


# ---------------------------------------------------------------- breakers

def breaker_snap(state: BreakerState, gen: int) -> Snap:
    return {"failures": state.failures, "opened_at": state.opened_at, "trials": state.trials,
            "times_opened": state.times_opened, "half_open": state.half_open, "gen": gen}


def breaker_op(cur: Snap, base: Snap | None, offset: float) -> tuple[Snap, bool]:
    """The change from ``base`` to ``cur`` as a ``merge`` operation (see the module)."""
    b = base or ZERO_BREAKER
    full = {**cur, "opened_at": _wall(cur["opened_at"], offset), "gen": 0}
    op: Snap = {"full": full}
    add: Snap = {}
    put: Snap = {}
    if _moved(cur["opened_at"], b["opened_at"]):  # it opened (again) or closed here
        put.update(opened_at=full["opened_at"], half_open=cur["half_open"], trials=cur["trials"])
        add["gen"] = 1
    else:
        if cur["trials"] != b["trials"]:
            add["trials"] = cur["trials"] - b["trials"]
            if cur["trials"] > b["trials"]:
                op["trial"] = True
        if cur["half_open"] and not b["half_open"]:
            put["half_open"] = True
    if cur["times_opened"] != b["times_opened"]:
        add["times_opened"] = cur["times_opened"] - b["times_opened"]
    if cur["failures"] < b["failures"]:
        put["failures"] = cur["failures"]
    elif cur["failures"] != b["failures"]:
        add["failures"] = cur["failures"] - b["failures"]
    if add:
        op["add"] = add
    if put:
        op["set"] = put
    return op, bool(add or put)


def apply_breaker(state: BreakerState, g: Snap, ref: Snap | None, *, keep: bool,
                  offset: float) -> Snap:
    """Apply the shared breaker ``g`` in place (like :func:`apply_connection`). A
    transition made elsewhere bumps the local generation: a ticket from before it
    frees no trial slot (the shared record's trials were reset with it)."""
    cur = breaker_snap(state, 0)
    r = ref or ZERO_BREAKER
    gen = int(g.get("gen") or 0)
    if not keep:
        if gen != r["gen"]:
            state.opened_at = _local(g.get("opened_at"), offset)
            state.half_open = bool(g.get("half_open"))
            state.trials = int(g.get("trials") or 0)
            state.generation += 1
        else:
            state.trials = max(0, int(g.get("trials") or 0) + cur["trials"] - r["trials"])
            state.half_open = bool(g.get("half_open")) or cur["half_open"]
    grown = cur["failures"] - r["failures"]
    state.failures = int(g.get("failures") or 0) + grown if grown >= 0 else cur["failures"]
    state.times_opened = (int(g.get("times_opened") or 0)
                          + max(0, cur["times_opened"] - r["times_opened"]))
    base = {name: g.get(name, ZERO_BREAKER[name]) for name in ZERO_BREAKER}
    base["opened_at"] = _local(base["opened_at"], offset)
    base["gen"] = gen
    return base
