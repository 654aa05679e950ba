"""A subscription account's quota, as its service last reported it.

Subscriptions meter use in windows (Claude: a 5-hour and a weekly window; Codex: a
primary and a secondary window; Copilot: a monthly allowance of premium requests;
Gemini: a daily allowance per model) and say so in answer headers, error bodies or a
usage endpoint. A provider takes its account's :class:`Quota` from the gateway's
:class:`Quotas` (``ProviderContext.quotas``) and feeds it what it reads;
``/api/rate-limits`` shows :meth:`Quota.snapshot` (through ``Provider.quota_view``).

When the service says the allowance is spent (Claude's 429 ``rejected``, Codex's 429
``usage_limit_reached``, Copilot's 402 ``quota_exceeded``, Gemini's daily 429,
Qwen's 429 "quota exceeded"), :meth:`Quota.exhaust` rests the account until the reset
the service named: :meth:`Quota.check` then refuses calls at once, without asking the
service again, with a 429 whose ``Retry-After`` is the time left, so the gateway cools
the account down and moves on to the next target. The rest ends at the reset time (at
most :data:`MAX_REST` ahead); neither an answer that was already under way when the
allowance ran out, nor an operator's reset of the cooldowns (``POST
/api/resilience/reset``), nor a configuration reload that rebuilds the provider ends
it: :class:`Quotas` keeps each account's quota by connection id for the life of the
process. Kept in memory: a restart asks the service once more.
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
    #: the service's verdict on this window, where it gives one (Claude: ``allowed``,
    #: ``allowed_warning``, ``rejected``)
    status: str | None = None


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
        #: the service's overall verdict (Claude's ``anthropic-ratelimit-unified-status``)
        self.status: str | None = None
        #: the window that binds now (Claude's representative claim)
        self.binding: str | None = None
        #: other things the service said, as it said them (Claude's overage and fallback)
        self.notes: dict[str, str] = {}
        self.updated_at: float | None = None
        #: the account rests until then (epoch seconds), because ``reason``
        self.exhausted_until: float | None = None
        self.reason: str | None = None

    def update(self, windows: Iterable[Window], *, plan: str | None = None,
               status: str | None = None, binding: str | None = None,
               notes: Mapping[str, str] | None = None) -> None:
        """What the service just reported (windows and notes it did not mention are kept;
        ``status`` and ``binding`` are replaced when it gave them)."""
        changed = False
        for window in windows:
            self.windows[window.name] = window
            changed = True
        for name, value in (("plan", plan), ("status", status), ("binding", binding)):
            if value:
                setattr(self, name, value)
                changed = True
        if notes:
            self.notes.update(notes)
            changed = True
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
            "status": self.status,
            "binding": self.binding,
            "notes": dict(self.notes),
            "updated_at": self.updated_at,
            "exhausted": left is not None,
            "resets_at": self.exhausted_until if left is not None else None,
            "reason": self.reason if left is not None else None,
            "windows": [asdict(w) for w in self.windows.values()],
        }


class Quotas:
    """Every account's :class:`Quota` by connection id, for the life of the process.

    A provider instance takes its account's from here (:meth:`of`) instead of making
    its own, so a rest outlives the instance: a configuration reload that rebuilds the
    provider (a connection edited) finds it again. The catalog forgets the quotas of
    deleted connections (:meth:`retain`).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._by_id: dict[str, Quota] = {}

    def of(self, connection_id: str, name: str) -> Quota:
        """The account's quota (made empty the first time; ``name`` kept current)."""
        quota = self._by_id.get(connection_id)
        if quota is None:
            quota = self._by_id[connection_id] = Quota(name, clock=self.clock)
        quota.name = name
        return quota

    def retain(self, connection_ids: Iterable[str]) -> None:
        """Forget the quotas of connections that no longer exist."""
        keep = set(connection_ids)
        for gone in [cid for cid in self._by_id if cid not in keep]:
            del self._by_id[gone]

    def __len__(self) -> int:
        return len(self._by_id)


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
        if w.get("status") not in (None, "allowed"):
            said.append(str(w["status"]))
        if w.get("resets_at") is not None:
            said.append(f"resets in {_human(max(0.0, w['resets_at'] - now))}")
        if snapshot.get("binding") == w["name"]:
            said.append("(binding)")
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
