"""Trying targets: the strategy's plan, one target's attempt, and the error when all fail.

Every operation's targets go through :func:`try_target`, so every capability
gets the same accounting: a slot of the account's limits, its breaker, its
cooldown on failure, and one retry after a credential refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from omniroute.credentials import Refresher
from omniroute.errors import (
    CircuitOpen,
    ConnectionBusy,
    GatewayError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
)
from omniroute.resilience import Attempt, Plan, Resilience
from omniroute.routing import Route, Target

if TYPE_CHECKING:
    from omniroute.pipeline.context import RequestContext

T = TypeVar("T")
Failures = list[tuple[Target, GatewayError]]
#: the record's attempt log while the request runs (see :func:`tried`)
Tries = list[dict[str, Any]]


def first_plan(resilience: Resilience, route: Route, strategy: str, session: str | None
               ) -> Plan:
    """The targets to try now, in order; empty when every one rests (then
    :func:`waited_plan`, for an operation that cannot answer without a target)."""
    if not route.targets:
        raise ServiceUnavailable(f"Model {route.requested!r} has no usable target.")
    return resilience.plan(route.targets, route.strategy or strategy, session)


async def waited_plan(resilience: Resilience, route: Route, strategy: str, session: str | None
                      ) -> Plan:
    """Every target rests: wait (bounded) for the soonest, then plan again."""
    await resilience.wait_for_available(route.targets)  # bounded; else 429 / 503
    return resilience.plan(route.targets, route.strategy or strategy, session)


async def try_target(
    resilience: Resilience,
    refresher: Refresher,
    ctx: RequestContext,
    failures: Failures,
    call: Callable[[RequestContext, Target], Awaitable[T]],
    target: Target,
) -> tuple[T, Attempt] | None:
    """One target: take a slot of its account, ``call(ctx, target)``, judge a failure.

    Returns the result with the attempt still open (the caller ends it), or
    None after adding why to ``failures`` (busy, resting, or an upstream
    failure worth moving on from). The client's own mistakes are raised. A
    401/403 gets one retry after a credential refresh where the provider
    supports it (``refresher``: one renewal per connection at a time). Each
    call (and each target not tried) is added to the record's attempt log
    (``ctx.tries``). ``target`` comes last: the pipeline binds the rest once per
    request (``partial``) and calls that with each target.
    """
    record, session, tries = ctx.record, ctx.session, ctx.tries
    refreshed = False
    while True:  # at most twice: once more after a credential refresh
        record.attempts += 1
        record.provider, record.connection_id, record.model = (
            target.prefix, target.connection.id, target.model)
        attempt = resilience.attempt(target, session, refreshed)
        try:  # the breaker; a slot of the account's limits, which may take a wait
            if not attempt.enter():
                await attempt.__aenter__()
        except (ConnectionBusy, CircuitOpen) as err:  # not tried: full, or resting
            record.attempts -= 1
            failures.append((target, err))
            tries.append(tried(target, err))
            return None
        except BaseException:  # not tried either: cancelled while queued for a slot
            record.attempts -= 1
            raise
        started = time.perf_counter()
        try:
            answer = await call(ctx, target)
        except BaseException as exc:
            tries.append(tried(target, exc, started))
            attempt.end(exc)  # charges the account
            if not isinstance(exc, (UpstreamError, UpstreamStatusError)):
                raise
            decision = attempt.decision
            if decision is not None and decision.refresh and not refreshed:
                refreshed = await refresher.refresh(
                    target.provider, sent_with=getattr(exc, "credentials_generation", None))
                if refreshed:
                    continue
            if decision is not None and not decision.move_on:
                raise  # the client's own mistake: retrying elsewhere would hide it
            failures.append((target, exc))
            return None
        # tried(target, None, started) with ms_since(started), inline: every request's one
        # call that answered
        tries.append({"target": target.label, "failure": None, "status": None,
                      "ms": int((time.perf_counter() - started) * 10000 + 0.5) / 10})
        return answer, attempt


#: characters of a failed attempt's message kept in the attempt log
ATTEMPT_ERROR_MAX = 300


def ms_since(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()``), to a tenth, half up.

    Not ``round(ms, 1)``: rounding to a digit goes through decimal strings, about 3k
    instructions; this is about 1k (the same tenths, but for exact ties)."""
    return int((time.perf_counter() - started) * 10000 + 0.5) / 10


def tried(
    target: Target, failure: BaseException | None, started: float | None = None
) -> dict[str, Any]:
    """One entry of the record's attempt log: the target, why it failed (the error's
    class name; None: it answered), the status it gave, and its milliseconds to the
    answer's first byte or to the failure (:func:`ms_since`; 0 when it was not called);
    a gateway error adds its message (``error``, cut to :data:`ATTEMPT_ERROR_MAX`), as
    the record keeps the final one."""
    status = None
    if isinstance(failure, GatewayError):
        status = failure.status
    elif isinstance(failure, asyncio.CancelledError):
        status = 499  # the client left, or another target won the race
    entry = {"target": target.label,
             "failure": None if failure is None else type(failure).__name__,
             "status": status,
             "ms": 0.0 if started is None else ms_since(started)}
    if isinstance(failure, GatewayError) and failure.message:
        entry["error"] = failure.message[:ATTEMPT_ERROR_MAX]
    return entry


def all_failed(
    route: Route, failures: Failures, skipped: tuple[tuple[Target, str], ...],
) -> GatewayError:
    """The error for a request no target could serve."""
    if len(failures) == 1 and not skipped and not isinstance(failures[0][1], ConnectionBusy):
        return failures[0][1]  # one target: its own error says it best
    busy = [e for _, e in failures if isinstance(e, ConnectionBusy)]
    if failures and len(busy) == len(failures) and not skipped:
        waits = [e.retry_after for e in busy if e.retry_after is not None]
        return RateLimited(
            f"Every account for {route.requested!r} is at its limit; retry shortly.",
            retry_after=min(waits) if waits else 1.0, code="all_accounts_busy")
    detail = "; ".join([*(f"{t.label}: {e.status} {e.message}" for t, e in failures),
                        *(f"{t.label}: skipped ({why})" for t, why in skipped)])
    count = len(failures) + len(skipped)
    retry_after = [e.headers["Retry-After"] for _, e in failures if "Retry-After" in e.headers]
    return ServiceUnavailable(
        f"All {count} targets for {route.requested!r} failed: {detail}",
        code="all_targets_failed",
        headers={"Retry-After": min(retry_after, key=_seconds)} if retry_after else None,
    )


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")
