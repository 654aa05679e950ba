"""Resilience: which targets to try, in what order, and what failures cost.

The proxy talks to :class:`Resilience` (see :mod:`omniroute.resilience.core`
for the API and a usage sketch). The parts, each usable alone:

* :mod:`.attempt` — one request's plan, one try of a target, a failure's verdict;
* :mod:`.account` — a connection's handles (statistics, breaker, limiter);
* :mod:`.planning` — a request's plan, and a route's plan kept while nothing in it rests;
* :mod:`.strategies` — orders targets (priority, round-robin, weighted, ...);
* :mod:`.classify` — what an upstream failure means (move on? cooldown? terminal?);
* :mod:`.cooldown` — rest periods from upstream hints or exponential backoff;
* :mod:`.breaker` — a circuit breaker per provider;
* :mod:`.limits` — per-connection concurrency and requests-per-minute, queued;
* :mod:`.sessions` — sticky sessions;
* :mod:`.stats` — per-connection statistics;
* :mod:`.state` — where the state lives (:class:`StateStore`; in memory by default);
* :mod:`.clock` — injectable time.
"""

from omniroute.resilience.attempt import Attempt, Decision, Plan
from omniroute.resilience.classify import Classification, classify, classify_status
from omniroute.resilience.clock import Clock, ManualClock, SystemClock
from omniroute.resilience.core import Resilience
from omniroute.resilience.sessions import SessionStore, fingerprint, session_id
from omniroute.resilience.state import BreakerState, LimitState, MemoryState, StateStore
from omniroute.resilience.stats import ConnectionStats
from omniroute.resilience.strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "Attempt",
    "BreakerState",
    "Classification",
    "Clock",
    "ConnectionStats",
    "Decision",
    "LimitState",
    "ManualClock",
    "MemoryState",
    "Plan",
    "Resilience",
    "SessionStore",
    "StateStore",
    "SystemClock",
    "classify",
    "classify_status",
    "fingerprint",
    "session_id",
]
