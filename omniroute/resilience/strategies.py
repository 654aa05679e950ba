"""Strategies: in which order to try a route's targets.

Each strategy takes the targets (in the route's priority order) and returns
all of them reordered: the first choice first, the rest as fallbacks. Any
randomness comes from the injected ``random.Random`` (``Context.rng``), so a
seeded one makes every choice repeatable.

``priority``
    The route's order (connection priority, then combo step order).
``round-robin``
    Rotates the first choice through the targets, staying on each for
    ``sticky_for`` requests (the ``round_robin_sticky`` setting).
``weighted``
    Random order weighted by each target's weight: its combo step's ``weight``
    times its connection's ``weight`` setting (each default 1; 0 sorts last).
``random``
    A uniform shuffle.
``least-used``
    Fewest requests so far first; ties go to the one used longest ago.
``fill-first``
    The route's order, but targets whose limits are full right now move to
    the back: fill one account before spilling onto the next.
``cost-optimized``
    Cheapest blended price first (:mod:`omniroute.pricing`); unknown prices last.
``latency-optimized``
    Lowest moving-average time to first token first; a target never
    measured goes first once, so that it gets measured.
``p2c``
    Power of two choices: pick two at random, keep the one with the lower
    load score (in-flight requests, latency, error rate); repeat for the rest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omniroute.resilience.stats import ConnectionStats
from omniroute.routing import Target

DEFAULT = "priority"
#: rotation state kept for at most this many distinct target lists
MAX_ROTATIONS = 4096


class Rotation:
    """Round-robin positions, one per distinct list of targets."""

    def __init__(self) -> None:
        self._state: dict[tuple[tuple[str, str], ...], tuple[int, int]] = {}

    def start(self, targets: Sequence[Target], sticky_for: int) -> int:
        """The index to start from this time (advances every ``sticky_for`` calls)."""
        key = tuple((t.connection.id, t.model) for t in targets)
        index, served = self._state.pop(key, (0, 0))
        if served >= max(1, sticky_for):
            index, served = (index + 1) % len(targets), 0
        self._state[key] = (index, served + 1)
        if len(self._state) > MAX_ROTATIONS:
            self._state.pop(next(iter(self._state)))
        return index % len(targets)

    def clear(self) -> None:
        self._state.clear()


@dataclass
class Context:
    """What a strategy may look at."""

    rng: random.Random
    stats: Callable[[Target], ConnectionStats]
    saturated: Callable[[Target], bool]
    #: USD per 1M tokens, three input to one output (None: the price is unknown)
    price: Callable[[Target], float | None]
    rotation: Rotation = field(default_factory=Rotation)
    sticky_for: int = 1


Strategy = Callable[[Sequence[Target], Context], list[Target]]


def priority(targets: Sequence[Target], ctx: Context) -> list[Target]:
    return list(targets)


def round_robin(targets: Sequence[Target], ctx: Context) -> list[Target]:
    if not targets:
        return []
    start = ctx.rotation.start(targets, ctx.sticky_for)
    return list(targets[start:]) + list(targets[:start])


def _weight(target: Target) -> float:
    """The combo step's weight times the connection's ``weight`` setting (default 1)."""
    value = target.connection.settings.get("weight", 1)
    try:
        weight = float(value) * float(target.weight)
    except (TypeError, ValueError):
        return max(0.0, float(target.weight))
    return weight if weight > 0 else 0.0


def weighted(targets: Sequence[Target], ctx: Context) -> list[Target]:
    # Efraimidis-Spirakis: sorting by u ** (1 / w) samples without replacement by weight
    keyed = []
    for index, target in enumerate(targets):
        weight = _weight(target)
        u = ctx.rng.random()
        keyed.append((weight > 0, u ** (1 / weight) if weight > 0 else 0.0, -index, target))
    keyed.sort(key=lambda k: k[:3], reverse=True)
    return [k[3] for k in keyed]


def shuffled(targets: Sequence[Target], ctx: Context) -> list[Target]:
    out = list(targets)
    ctx.rng.shuffle(out)
    return out


def least_used(targets: Sequence[Target], ctx: Context) -> list[Target]:
    def key(item: tuple[int, Target]) -> tuple[int, float, int]:
        index, target = item
        stats = ctx.stats(target)
        last = stats.last_used_at if stats.last_used_at is not None else float("-inf")
        return stats.total_requests, last, index

    return [t for _, t in sorted(enumerate(targets), key=key)]


def fill_first(targets: Sequence[Target], ctx: Context) -> list[Target]:
    return sorted(targets, key=ctx.saturated)  # stable: the route's order within each group


def cost_optimized(targets: Sequence[Target], ctx: Context) -> list[Target]:
    def key(target: Target) -> tuple[bool, float]:
        price = ctx.price(target)
        return price is None, price if price is not None else 0.0

    return sorted(targets, key=key)


def latency_optimized(targets: Sequence[Target], ctx: Context) -> list[Target]:
    def key(target: Target) -> tuple[bool, float]:
        ttft = ctx.stats(target).ttft
        return ttft is not None, ttft or 0.0

    return sorted(targets, key=key)


def load_score(stats: ConnectionStats, typical_ttft: float) -> float:
    """Lower is better: in-flight requests x latency x (1 + 9 x error rate)."""
    latency = stats.ttft if stats.ttft is not None else typical_ttft
    return (stats.in_flight + 1) * max(latency, 1e-3) * (1 + 9 * stats.error_rate)


def p2c(targets: Sequence[Target], ctx: Context) -> list[Target]:
    known = [s.ttft for s in map(ctx.stats, targets) if s.ttft is not None]
    typical = sum(known) / len(known) if known else 1.0
    rest = list(enumerate(targets))
    out: list[Target] = []
    while rest:
        if len(rest) == 1:
            out.append(rest.pop()[1])
            break
        a, b = ctx.rng.sample(range(len(rest)), 2)
        score_a = (load_score(ctx.stats(rest[a][1]), typical), rest[a][0])
        score_b = (load_score(ctx.stats(rest[b][1]), typical), rest[b][0])
        out.append(rest.pop(a if score_a <= score_b else b)[1])
    return out


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "round-robin": round_robin,
    "weighted": weighted,
    "random": shuffled,
    "least-used": least_used,
    "fill-first": fill_first,
    "cost-optimized": cost_optimized,
    "latency-optimized": latency_optimized,
    "p2c": p2c,
}


def normalize(name: str | None) -> str | None:
    """``"Round_Robin"`` -> ``"round-robin"``; ``None`` when it names no strategy."""
    if not name:
        return None
    key = name.strip().lower().replace("_", "-")
    return key if key in STRATEGIES else None
