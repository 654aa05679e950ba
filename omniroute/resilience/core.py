"""The resilience facade: which targets to try, and what a failure costs.

One :class:`Resilience` per gateway. Its state (statistics, cooldowns,
breakers, limit counters, sessions) lives in a
:class:`~omniroute.resilience.state.StateStore`: this process's memory by
default, shared between instances by another store. The proxy uses it like this::

    plan = resilience.plan(route.targets, strategy=combo_strategy, session_id=sid)
    if not plan.targets:
        await resilience.wait_for_available(route.targets)  # or raises RateLimited
        plan = resilience.plan(...)
    for target in plan.targets:
        try:
            async with resilience.attempt(target, session_id=sid) as attempt:
                upstream = await target.provider.chat(call)
                attempt.first_byte()
                ...  # relay; on a mid-stream failure: attempt.failed(err)
        except (ConnectionBusy, CircuitOpen):
            continue  # that account is full or its provider is resting: next one
        except (UpstreamError, UpstreamStatusError):
            if attempt.decision.refresh: ...  # refresh credentials, retry with refreshed=True
            if not attempt.decision.move_on:
                raise  # the client's own mistake, passed back unchanged
            continue

The API:

* ``plan(targets, strategy=None, session_id=None) -> Plan`` — the strategy's
  order minus targets that are terminal, cooling down or behind an open
  breaker; the session's sticky connection first while it is usable; at most
  ``max_attempts`` targets. A route's plan (a tuple of targets) is kept while
  every account in it is clear, and given again (:mod:`.planning`).
* ``attempt(target, session_id=None, refreshed=False) -> Attempt`` — an async
  context manager: admits through the provider's breaker (else
  :class:`~omniroute.errors.CircuitOpen`), takes a slot of the connection's
  limits (may wait; else :class:`~omniroute.errors.ConnectionBusy`), counts
  the request in flight. Leaving the block normally records a success (and
  binds the session); leaving it with an upstream error records that failure
  (``attempt.decision``); a cancellation records nothing. Slots and breaker
  trials are released on every exit. Without limits it can be entered and left
  without awaiting: ``attempt.enter()`` (False: await ``__aenter__`` instead) and
  ``attempt.end(error)``.
* ``account(target) -> Account`` — the handles of the target's connection
  (statistics, breaker, limiter), built once per connection object.
* ``hedge_after(target, lane) -> float | None`` — how long a call to ``target``
  may go without a first byte before the next target is raced against it;
  ``record_outrun(target, seconds, lane)`` — such a call lost the race.
* ``record_success(target, *, ttft=None, session_id=None)`` and
  ``record_failure(target, error, *, refreshed=False) -> Decision`` — the same
  bookkeeping without an ``attempt``.
* ``soonest_available(targets) -> float | None`` and
  ``await wait_for_available(targets, *, max_wait=None)`` — when every target
  rests: wait (bounded by ``wait_for_cooldown_max``) or fail fast with
  :class:`~omniroute.errors.RateLimited` and ``Retry-After``.
* ``reset(connection_id=None)`` — operator reset of cooldowns, terminal
  states and breakers (all, or one connection and its provider's breaker).
* ``sign_in_needed(connection_id, why)`` — an OAuth account must be signed in again
  (terminal ``needs_sign_in``, which a reset leaves), or (``why=None``) no longer.
* ``snapshot(connections=()) -> dict`` — plain JSON-able state for
  ``/api/rate-limits``, ``/api/sessions`` and health.
* ``breaker_states()`` and ``rests(connections)`` — the few numbers ``/metrics``
  reads at scrape time (no sessions, no per-connection dicts).
* ``configure(settings)`` — apply changed settings, keeping the state.

A connection's limits come from its settings (``max_concurrency``, ``rpm``);
its provider counts as a subscription (OAuth) one when the provider class has
``auth_kind = "oauth"``, which picks the breaker thresholds and allows one
credential refresh on 401/403. Breakers are keyed by connection prefix.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omniroute.config import Settings
from omniroute.errors import (
    RateLimited,
    ServiceUnavailable,
)
from omniroute.pricing import PriceBook
from omniroute.providers.base import Provider
from omniroute.resilience.account import BREAKER_OPEN, COOLING, TERMINAL, Account
from omniroute.resilience.attempt import Attempt, Decision, Plan
from omniroute.resilience.breaker import Breaker, BreakerPolicy
from omniroute.resilience.classify import classify
from omniroute.resilience.clock import Clock, SystemClock
from omniroute.resilience.cooldown import Backoff
from omniroute.resilience.limits import Limiter
from omniroute.resilience.planning import Planner
from omniroute.resilience.sessions import SessionStore
from omniroute.resilience.state import BreakerState, LimitState, MemoryState, StateStore
from omniroute.resilience.stats import NEEDS_SIGN_IN, ConnectionStats
from omniroute.routing import Target
from omniroute.storage.store import Connection

log = logging.getLogger(__name__)

__all__ = ["BREAKER_OPEN", "COOLING", "TERMINAL", "Resilience"]


def auth_kind(provider: Provider) -> str:
    """``"oauth"`` for subscription providers, else ``"api_key"``."""
    return provider.auth_kind


def breaker_key(target: Target) -> str:
    return target.connection.prefix


def _limit(settings: Mapping[str, Any], name: str) -> int | None:
    value = settings.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


class Resilience:
    """Strategies, cooldowns, breakers, limits and sticky sessions for one gateway."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        prices: PriceBook | None = None,
        state: StateStore | None = None,
    ) -> None:
        """
        :param settings: the runtime settings (defaults when omitted).
        :param state: where the state lives (default: this process's memory,
            :class:`~omniroute.resilience.state.MemoryState`).
        :param clock: time source (a ``ManualClock`` in tests).
        :param rng: randomness for the random strategies (seed it for repeatable choices).
        :param prices: the gateway's :class:`~omniroute.pricing.PriceBook` (``cost-optimized``).
        """
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or Settings()
        self.state: StateStore = state if state is not None else MemoryState()
        self.sessions = SessionStore(ttl=self.settings.session_ttl,
                                     max_size=self.settings.session_max, clock=self.clock,
                                     items=self.state.sessions)
        # the store's own table, read directly: no call between a request and its numbers
        self._stats_by_id = self.state.connections
        #: each connection's handles, by connection id (:mod:`.account`)
        self._accounts: dict[str, Account] = {}
        # the policies over the store's records (limits, breakers) are this process's own
        self._limiters: dict[str, Limiter] = {}
        self._breakers: dict[str, Breaker] = {}
        self._breaker_kinds: dict[str, str] = {}
        #: the plans (:mod:`.planning`)
        self.planner = Planner(self.settings, account=self.account, sessions=self.sessions,
                               clock=self.clock, rng=rng or random.Random(),
                               prices=prices if prices is not None else PriceBook())
        self.configure(self.settings)

    # ------------------------------------------------------------------ settings

    def configure(self, settings: Settings) -> None:
        """Apply (changed) settings; statistics, cooldowns and sessions are kept."""
        self.settings = settings
        self.planner.configure(settings)  # max_attempts, the account strategy
        self.backoff = Backoff(settings.cooldown_base, settings.cooldown_factor,
                               settings.cooldown_max)
        self.sessions.configure(ttl=settings.session_ttl, max_size=settings.session_max)
        for key, breaker in self._breakers.items():
            breaker.policy = self._breaker_policy(self._breaker_kinds[key])
        for limiter in self._limiters.values():
            limiter.configure(max_concurrency=limiter.max_concurrency, rpm=limiter.rpm,
                              queue_size=settings.queue_size,
                              queue_timeout=settings.queue_timeout)

    def _breaker_policy(self, kind: str) -> BreakerPolicy:
        s = self.settings
        if kind == "oauth":
            return BreakerPolicy(s.breaker_threshold_oauth, s.breaker_reset_oauth,
                                 s.breaker_half_open_max)
        return BreakerPolicy(s.breaker_threshold, s.breaker_reset, s.breaker_half_open_max)

    # ------------------------------------------------------------------ state lookups

    def account(self, target: Target) -> Account:
        """The handles of ``target``'s connection: built the first time its connection
        object is seen (a reload with new settings brings a new one), then found in one
        lookup."""
        conn = target.connection
        account = self._accounts.get(conn.id)
        if account is None or account.connection is not conn:
            stats = self._stats_by_id.get(conn.id)
            if stats is None:
                stats = self._stats_by_id[conn.id] = ConnectionStats(conn.id)
            account = self._accounts[conn.id] = Account(
                target, stats, self._breaker(target), self._limiter_for(conn))
        return account

    def _breaker(self, target: Target) -> Breaker:
        key = breaker_key(target)
        breaker = self._breakers.get(key)
        if breaker is None:
            kind = auth_kind(target.provider)
            self._breaker_kinds[key] = kind
            records = self.state.breakers
            data = records.get(key)
            if data is None:
                data = records[key] = BreakerState()
            breaker = self._breakers[key] = Breaker(key, self._breaker_policy(kind), data)
        return breaker

    def _limiter_for(self, conn: Connection) -> Limiter | None:
        """The connection's limiter, following its current settings (None: no limits)."""
        settings = conn.settings
        if "max_concurrency" not in settings and "rpm" not in settings and (
                conn.id not in self._limiters):  # the common case, in three lookups
            return None
        concurrency = _limit(conn.settings, "max_concurrency")
        rpm = _limit(conn.settings, "rpm")
        limiter = self._limiters.get(conn.id)
        if limiter is None:
            if concurrency is None and rpm is None:
                return None
            records = self.state.limits
            data = records.get(conn.id)
            if data is None:
                data = records[conn.id] = LimitState()
            limiter = self._limiters[conn.id] = Limiter(
                conn.id, clock=self.clock, max_concurrency=concurrency, rpm=rpm,
                queue_size=self.settings.queue_size, queue_timeout=self.settings.queue_timeout,
                data=data, shared=self.state.slots)
        elif (limiter.max_concurrency, limiter.rpm) != (concurrency, rpm):
            limiter.configure(max_concurrency=concurrency, rpm=rpm,
                              queue_size=self.settings.queue_size,
                              queue_timeout=self.settings.queue_timeout)
        return limiter

    def limiter_ahead(self, targets: Sequence[Target]) -> Limiter | None:
        """The limiter whose shared slot a request on ``targets`` will take first, when that
        is known before its plan: one target, not resting, with limits shared between
        instances and no request of this instance queued for them (None otherwise)."""
        if len(targets) != 1:
            return None
        conn = targets[0].connection
        settings = conn.settings
        if "max_concurrency" not in settings and "rpm" not in settings and (
                conn.id not in self._limiters):  # no limits (_limiter_for's test): no account
            return None
        account = self.account(targets[0])
        limiter = account.limiter
        if limiter is None or limiter.shared is None or limiter.queued:
            return None
        stats = account.stats
        if (stats.cooling_until is not None or stats.terminal_reason is not None
                or account.breaker_state.opened_at is not None) and (
                account.rest(self.clock.monotonic()) is not None):
            # (asked only when something recorded could make it rest: the planner's
            # clear(), in line; nearly every request's account is clear, and pays no call)
            return None
        return limiter

    # ------------------------------------------------------------------ planning

    def plan(
        self, targets: Sequence[Target], strategy: str | None = None,
        session_id: str | None = None,
    ) -> Plan:
        """The targets to try, in order (see the module docstring and :mod:`.planning`,
        which keeps a route's plan while every account in it is clear)."""
        return self.planner.plan(targets, strategy, session_id)

    @property
    def rng(self) -> random.Random:
        """The randomness of the random strategies (the planner's; seed it for
        repeatable choices)."""
        return self.planner.rng

    @rng.setter
    def rng(self, rng: random.Random) -> None:
        self.planner.rng = rng

    # ------------------------------------------------------------------ attempts

    def attempt(
        self, target: Target, session_id: str | None = None, refreshed: bool = False
    ) -> Attempt:
        """One try of ``target`` as an async context manager (see the module docstring).

        :param session_id: bound to the target's connection when the attempt succeeds.
        :param refreshed: the credentials were just refreshed for this request, so a
            401/403 now counts against the connection.
        """
        conn = target.connection
        account = self._accounts.get(conn.id)  # self.account(target), inline: every request
        if account is None or account.connection is not conn:
            account = self.account(target)
        return Attempt(self, account, target, session_id, refreshed)

    def record_success(
        self, target: Target, *, ttft: float | None = None, session_id: str | None = None
    ) -> None:
        """A success: clears the failure streak and any cooldown, closes the breaker."""
        self.succeeded(self.account(target), ttft, session_id)

    def succeeded(self, account: Account, ttft: float | None, session_id: str | None) -> None:
        """:meth:`record_success` with the target's account at hand (an
        :class:`~omniroute.resilience.attempt.Attempt` has it)."""
        stats = account.stats
        streak = stats.consecutive_failures or stats.cooling_until is not None
        stats.succeeded(ttft)
        if streak:  # only transitions are announced: a healthy connection's success is silent
            self.state.changed("connections", stats.connection_id)
        state = account.breaker_state
        # a closed breaker without a failure streak has nothing to clear (the common case)
        if (state.opened_at is not None or state.failures) and account.breaker.success():
            self.state.changed("breakers", account.breaker.key)
        if session_id is not None:
            self.sessions.bind(session_id, account.id)

    def hedge_after(self, target: Target, lane: str = "stream") -> float | None:
        """Seconds without a first byte after which a call to ``target`` is worth racing.

        ``hedge_factor`` times the p95 of its recent first-byte times on ``lane``,
        at least ``hedge_floor``; ``hedge_initial`` until it has enough of them.
        None when hedging is off.
        """
        s = self.settings
        if not s.hedge:
            return None
        stats = self._stats_by_id.get(target.connection.id)
        p95 = stats.ttft_p95(target.model, lane) if stats is not None else None
        return max(s.hedge_floor, s.hedge_initial if p95 is None else s.hedge_factor * p95)

    def record_outrun(self, target: Target, seconds: float, lane: str = "stream") -> None:
        """A call to ``target``, raced after its hedge bound, lost after ``seconds``.

        Not a failure (it was slow, not wrong), but its wait counts as a first-byte
        time, so a target that is always slow gets a later bound.
        """
        self.account(target).stats.outran(target.model, lane, seconds)

    def record_failure(
        self, target: Target, error: BaseException, *, refreshed: bool = False
    ) -> Decision:
        """Classify a failure of ``target`` and apply what it costs the connection."""
        account = self.account(target)
        breaker = account.breaker
        verdict = classify(error, format=target.provider.format,
                           can_refresh=account.oauth and not refreshed,
                           now_wall=self.clock.time())
        if not verdict.move_on:  # the request's own fault: the connection did nothing wrong
            return Decision(False, verdict)
        now = self.clock.monotonic()
        stats = account.stats
        if verdict.refresh:
            stats.failed(now, verdict.message or verdict.kind, counted=False)
            return Decision(True, verdict, refresh=True)
        stats.failed(now, verdict.message or verdict.kind, counted=verdict.penalty != "none")
        cooldown = None
        if verdict.penalty == "terminal":
            if stats.terminal_reason != NEEDS_SIGN_IN:  # the more useful reason stays
                stats.terminal_reason = verdict.terminal_reason or verdict.kind
            log.warning("connection %s is out of service: %s (%s)", target.connection.id,
                        stats.terminal_reason, verdict.message)
        elif verdict.penalty == "cooldown":
            cooldown = (verdict.retry_after if verdict.retry_after is not None
                        else self.backoff.delay(stats.consecutive_failures))
            stats.cool(now + cooldown)
        self.state.changed("connections", stats.connection_id)
        if verdict.breaker:
            breaker.failure(now)
            self.state.changed("breakers", breaker.key)
        return Decision(True, verdict, cooldown=cooldown, terminal_reason=stats.terminal_reason
                        if verdict.penalty == "terminal" else None)

    # ------------------------------------------------------------------ when all rest

    def soonest_available(self, targets: Iterable[Target]) -> float | None:
        """Seconds until the first of ``targets`` can be tried (0: now); ``None``: never
        without an operator (every one is terminal)."""
        now = self.clock.monotonic()
        soonest: float | None = None
        for target in targets:
            stats = self._stats_by_id.get(target.connection.id)
            if stats is not None and stats.terminal_reason is not None:
                continue
            wait = stats.cooldown_left(now) if stats is not None else 0.0
            breaker = self._breakers.get(breaker_key(target))
            if breaker is not None:
                wait = max(wait, breaker.retry_in(now))
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    async def wait_for_available(
        self, targets: Iterable[Target], *, max_wait: float | None = None
    ) -> None:
        """Wait until a target can be tried, if that is soon enough; else raise.

        :param max_wait: the bound (default: the ``wait_for_cooldown_max`` setting).
        :raises RateLimited: the wait would be longer (``Retry-After`` says how long).
        :raises ServiceUnavailable: every target is out until an operator acts.
        """
        targets = list(targets)
        wait = self.soonest_available(targets)
        if wait is None:
            raise ServiceUnavailable(
                "Every account for this model is out of service until an operator resets it.",
                code="all_targets_unavailable")
        bound = self.settings.wait_for_cooldown_max if max_wait is None else max_wait
        if wait > bound:
            raise RateLimited(f"Every account for this model is resting; retry in {wait:.0f}s.",
                              retry_after=wait, code="all_targets_cooling")
        if wait > 0:
            await self.clock.sleep(wait)

    # ------------------------------------------------------------------ operators

    def reset(self, connection_id: str | None = None) -> None:
        """Clear cooldowns, terminal states and breakers: all, or one connection's
        (and the breaker of its provider)."""
        changed = self.state.changed
        if connection_id is None:
            for stats in self._stats_by_id.values():
                stats.reset()
                changed("connections", stats.connection_id)
            for breaker in self._breakers.values():
                breaker.reset()
                changed("breakers", breaker.key)
            return
        one = self._stats_by_id.get(connection_id)
        if one is not None:
            one.reset()
            changed("connections", connection_id)
        account = self._accounts.get(connection_id)
        if account is not None:
            account.breaker.reset()
            changed("breakers", account.breaker.key)

    def sign_in_needed(self, connection_id: str, why: str | None) -> None:
        """Take an OAuth account out until it is signed in again (terminal
        ``needs_sign_in``, ``why`` as its last error); ``why=None`` ends that state
        (the account's credentials were replaced)."""
        stats = self._stats_by_id.get(connection_id)
        if why is None:
            if stats is not None and stats.terminal_reason == NEEDS_SIGN_IN:
                stats.terminal_reason = None
                self.state.changed("connections", connection_id)
            return
        if stats is None:
            stats = self._stats_by_id[connection_id] = ConnectionStats(connection_id)
        if stats.terminal_reason != NEEDS_SIGN_IN or stats.last_error != why[:500]:
            stats.terminal_reason = NEEDS_SIGN_IN
            stats.last_error = why[:500]
            log.warning("connection %s is out of service until it is signed in again: %s",
                        connection_id, why)
            self.state.changed("connections", connection_id)

    def retain(self, connection_ids: Iterable[str]) -> None:
        """Forget the state of connections that no longer exist (call after a reload)."""
        keep = set(connection_ids)
        for cid in [c for c in self._stats_by_id if c not in keep]:
            del self._stats_by_id[cid]
            self.state.changed("connections", cid)
        limits = self.state.limits
        for cid in [c for c in limits if c not in keep]:
            del limits[cid]
            self.state.changed("limits", cid)
        for table in (self._accounts, self._limiters):
            for cid in [c for c in table if c not in keep]:
                del table[cid]
        self.planner.forget()
        self.sessions.retain(keep)

    def breaker_states(self) -> dict[str, str]:
        """Each breaker's state by provider prefix: ``closed``, ``half_open`` or ``open``."""
        now = self.clock.monotonic()
        return {key: breaker.state(now) for key, breaker in self._breakers.items()}

    def rests(self, connections: Iterable[Connection]) -> dict[str, tuple[float, bool]]:
        """Per connection id: seconds of cooldown left (0: none), and whether it is terminal."""
        now = self.clock.monotonic()
        out = {}
        for conn in connections:
            stats = self._stats_by_id.get(conn.id)
            out[conn.id] = ((0.0, False) if stats is None
                            else (stats.cooldown_left(now), stats.terminal_reason is not None))
        return out

    def snapshot(self, connections: Iterable[Connection] = ()) -> dict[str, Any]:
        """Plain JSON-able state: connections, breakers, sessions and health counts.

        :param connections: also list these (e.g. every configured one), used or not.
        """
        now = self.clock.monotonic()
        offset = self.clock.time() - now
        known = {cid: account.connection for cid, account in self._accounts.items()}
        for conn in connections:
            known.setdefault(conn.id, conn)
        rows = []
        health = {"healthy": 0, "degraded": 0, "down": 0}
        for cid, conn in sorted(known.items()):
            stats = self._stats_by_id.get(cid) or ConnectionStats(cid)
            breaker = self._breakers.get(conn.prefix)
            state = breaker.state(now) if breaker is not None else "closed"
            if (stats.terminal_reason or stats.cooling(now)
                    or (breaker is not None and not breaker.available(now))):
                status = "down"
            elif stats.consecutive_failures or state != "closed" or stats.error_rate >= 0.5:
                status = "degraded"
            else:
                status = "healthy"
            health[status] += 1
            limiter = self._limiter_for(conn)
            rows.append({
                **stats.snapshot(now, offset),
                "name": conn.name, "prefix": conn.prefix, "type": conn.type,
                "status": status, "breaker": conn.prefix,
                "limits": limiter.snapshot() if limiter is not None else None,
            })
        breakers = [b.snapshot(now) for _, b in sorted(self._breakers.items())]
        by_state = {"closed": 0, "open": 0, "half_open": 0}
        for b in breakers:
            by_state[b["state"]] += 1
        return {
            "connections": rows,
            "breakers": breakers,
            "sessions": self.sessions.snapshot(),
            "health": {**health, "breakers": by_state},
        }
