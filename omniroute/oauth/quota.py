"""A subscription account's quota, as its service last reported it.

Subscriptions meter use in windows (Codex: a 5-hour and a weekly window; Copilot:
a monthly allowance of premium requests) and say so in answer headers or a usage
endpoint. A provider keeps one :class:`Quota` per account and feeds it what it
reads; ``/api/rate-limits`` shows :meth:`Quota.snapshot` (through
``Provider.quota_view``).

When the service says the allowance is spent (Codex's 429 ``usage_limit_reached``,
Copilot's 402 ``quota_exceeded``), :meth:`Quota.exhaust` rests the account until
the reset the service named: :meth:`Quota.check` then refuses calls at once, without
asking the service again, with a 429 whose ``Retry-After`` is the time left, so the
gateway cools the account down and moves on to the next target. The rest ends at the
reset time (at most :data:`MAX_REST` ahead); an answer that was already under way when
the allowance ran out does not end it. Kept in memory, per process: a restart asks the
service once more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from omniroute.errors import UpstreamStatusError, retry_after_header

#: the longest rest a service's reset time may impose (a monthly allowance)
MAX_REST = 31 * 86_400.0


@dataclass(frozen=True, slots=True)
class Window:
    """One metered window or allowance; None where the service said nothing."""

    #: the service's name for it (``primary``, ``secondary``, ``premium_interactions``)
    name: str
    used_percent: float | None = None
    #: units left (requests), and the allowance, where the service counts them
    remaining: float | None = None
    limit: float | None = None
    #: when the window resets, epoch seconds
    resets_at: float | None = None
    #: the window's length (Codex: 300 for 5 hours, 10080 for a week)
    window_minutes: float | None = None
    unlimited: bool = False


def number(value: Any) -> float | None:
    """A finite number from a header or a JSON field (strings of digits too), else None."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class Quota:
    """One account's quota: its windows, and a rest while the allowance is spent."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.time) -> None:
        """
        :param name: the account, as messages name it (the connection's name).
        :param clock: epoch seconds.
        """
        self.name = name
        self.clock = clock
        self.windows: dict[str, Window] = {}
        self.plan: str | None = None
        self.updated_at: float | None = None
        #: the account rests until then (epoch seconds), because ``reason``
        self.exhausted_until: float | None = None
        self.reason: str | None = None

    def update(self, windows: Iterable[Window], *, plan: str | None = None) -> None:
        """What the service just reported (windows it did not mention are kept)."""
        changed = False
        for window in windows:
            self.windows[window.name] = window
            changed = True
        if plan:
            self.plan, changed = plan, True
        if changed:
            self.updated_at = self.clock()

    def exhaust(self, resets_at: float | None, reason: str) -> float:
        """The allowance is spent until ``resets_at`` (None: unknown, a short rest);
        returns the seconds the account rests."""
        now = self.clock()
        until = now + 60.0 if resets_at is None or resets_at <= now else resets_at
        self.exhausted_until = min(until, now + MAX_REST)
        self.reason = reason
        self.updated_at = now
        return self.exhausted_until - now

    def served(self) -> None:
        """The rest is over (its reset time passed)."""
        self.exhausted_until = None
        self.reason = None

    def resting(self) -> float | None:
        """Seconds the account still rests, or None."""
        if self.exhausted_until is None:
            return None
        left = self.exhausted_until - self.clock()
        if left <= 0:
            self.served()
            return None
        return left

    def check(self) -> None:
        """Refuse a call while the allowance is spent (see :func:`exhausted`)."""
        left = self.resting()
        if left is not None:
            raise exhausted(f"The subscription account {self.name!r} has used its quota "
                            f"({self.reason}); it resets in {_human(left)}.", left)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON: the windows, the plan, and the rest if any."""
        left = self.resting()
        return {
            "plan": self.plan,
            "updated_at": self.updated_at,
            "exhausted": left is not None,
            "resets_at": self.exhausted_until if left is not None else None,
            "reason": self.reason if left is not None else None,
            "windows": [asdict(w) for w in self.windows.values()],
        }


def exhausted(message: str, seconds: float, *,
              code: str = "quota_exhausted") -> UpstreamStatusError:
    """A 429 that rests the account ``seconds``: the gateway reads its ``retry-after``
    and moves on to the next target (the word "quota" makes it a quota failure)."""
    seconds = max(1.0, seconds)
    return UpstreamStatusError(
        message, status=429, type="rate_limit_error", code=code,
        headers={"Retry-After": retry_after_header(seconds)},
        upstream_headers={"retry-after": str(math.ceil(seconds))})


def describe(snapshot: Mapping[str, Any], now: float) -> str:
    """One line for operators (``omniroute rate-limits``) from :meth:`Quota.snapshot`."""
    parts = []
    for w in snapshot.get("windows") or ():
        if w.get("unlimited"):
            parts.append(f"{w['name']} unlimited")
            continue
        said = [w["name"]]
        if w.get("used_percent") is not None:
            said.append(f"{w['used_percent']:g}% used")
        if w.get("remaining") is not None:
            limit = f" of {w['limit']:g}" if w.get("limit") is not None else ""
            said.append(f"{w['remaining']:g}{limit} left")
        if w.get("resets_at") is not None:
            said.append(f"resets in {_human(max(0.0, w['resets_at'] - now))}")
        parts.append(" ".join(said))
    head = f"quota ({snapshot['plan']})" if snapshot.get("plan") else "quota"
    line = f"{head}: {'; '.join(parts) or 'nothing reported yet'}"
    if snapshot.get("exhausted") and snapshot.get("resets_at") is not None:
        line += (f"; RESTING {_human(max(0.0, snapshot['resets_at'] - now))}"
                 f" ({snapshot.get('reason')})")
    return line


def _human(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds)} s"
