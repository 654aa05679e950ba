"""What one API key may do: its limits, parsed once when the key index loads.

Stored as JSON in ``api_keys.limits`` (flat, every field optional)::

    {"daily_usd": 5, "weekly_usd": 20, "monthly_usd": 50,      # USD budgets per window
     "daily_tokens": 200000, "monthly_tokens": 5000000,        # tokens (in + out) per window
     "warn_at": 0.8,            # X-OmniRoute-Budget-Warning once spend passes this share
     "reset_time": "00:00",     # UTC time of day the windows start (HH:MM)
     "rpm": 60,                 # requests started per rolling minute
     "concurrency": 4,          # requests in flight at once
     "models": ["openai/*", "claude-*"],                       # allowed models, glob patterns
     "cache": "on", "cache_ttl": 600}  # the response cache's mode and TTL for this key

The expiry is a column of its own (``api_keys.expires_at``), checked by the
API-key auth scheme. :meth:`Limits.parse` validates what an operator sends
(the management API, the CLI) and raises :class:`ValueError` with a readable
message; a key with no limit at all gets ``None``, so the data path skips it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import translate
from typing import Any

#: the budget windows, shortest first
PERIODS = ("daily", "weekly", "monthly")
DEFAULT_WARN_AT = 0.8
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_NUMBERS = {f"{p}_usd" for p in PERIODS} | {f"{p}_tokens" for p in PERIODS}
FIELDS = (*(f"{p}_usd" for p in PERIODS), *(f"{p}_tokens" for p in PERIODS),
          "warn_at", "reset_time", "rpm", "concurrency", "models", "cache", "cache_ttl")
#: the response cache's modes (``omniroute.config.CACHE_MODES``)
CACHE_MODES = ("deterministic", "on", "off")


@dataclass(frozen=True, slots=True, eq=False)
class Limits:
    """One key's limits; ``None`` in a field means "no such limit"."""

    #: USD per window, by period (only the periods that have a budget)
    usd: Mapping[str, float] = field(default_factory=dict)
    #: tokens (prompt + completion) per window, by period
    tokens: Mapping[str, int] = field(default_factory=dict)
    warn_at: float = DEFAULT_WARN_AT
    #: minutes after midnight UTC at which every window starts
    reset_minutes: int = 0
    rpm: int | None = None
    concurrency: int | None = None
    models: tuple[str, ...] = ()
    #: why the stored limits could not be read (the key's requests are refused)
    unreadable: str | None = None
    #: the response cache's mode for this key (None: the ``cache_mode`` setting) and the
    #: TTL of the entries its requests store (None: the ``cache_ttl`` setting); read by
    #: the cache stage, not enforced by the budgets stage
    cache: str | None = None
    cache_ttl: float | None = None
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    #: the windows this key keeps count in (a USD or a token limit), shortest first; set
    #: once here (read several times by every request of the key)
    periods: tuple[str, ...] = field(init=False, repr=False)
    #: whether the budgets stage has anything to enforce (not only cache settings)
    enforced: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (frozen: the derived fields are set the way the dataclass sets its own)
        object.__setattr__(self, "periods", tuple(
            p for p in PERIODS if p in self.usd or p in self.tokens))
        object.__setattr__(self, "enforced", bool(
            self.usd or self.tokens or self.rpm or self.concurrency or self.models
            or self.unreadable is not None))

    @property
    def reset_time(self) -> str:
        return f"{self.reset_minutes // 60:02d}:{self.reset_minutes % 60:02d}"

    def allows(self, model: str) -> bool:
        """Whether ``model`` matches one of the allowed patterns (no patterns: every model)."""
        return self._pattern is None or self._pattern.match(model) is not None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Limits | None:
        """Validated limits from their JSON form; None when no limit is set.

        :raises ValueError: a field is unknown or its value is not usable.
        """
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown limit {', '.join(sorted(unknown))!s} "
                             f"(known: {', '.join(FIELDS)})")
        usd = {p: _number(f"{p}_usd", data[f"{p}_usd"], float) for p in PERIODS
               if data.get(f"{p}_usd") is not None}
        tokens = {p: _number(f"{p}_tokens", data[f"{p}_tokens"], int) for p in PERIODS
                  if data.get(f"{p}_tokens") is not None}
        rpm = _optional(data, "rpm", int)
        concurrency = _optional(data, "concurrency", int)
        models = _models(data.get("models"))
        cache = data.get("cache")
        if cache is not None and cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        cache_ttl = data.get("cache_ttl")
        if cache_ttl is not None:
            cache_ttl = _number("cache_ttl", cache_ttl, float)
            if cache_ttl <= 0:
                raise ValueError(f"cache_ttl must be positive seconds, got {cache_ttl!r}")
        if not (usd or tokens or rpm or concurrency or models or cache or cache_ttl):
            return None
        warn_at = data.get("warn_at")
        if warn_at is None:
            warn_at = DEFAULT_WARN_AT
        elif isinstance(warn_at, bool) or not isinstance(warn_at, int | float) or not (
                0 < warn_at <= 1):
            raise ValueError(f"warn_at must be a share of the budget above 0 and at most 1 "
                             f"(0.8 = 80%), got {warn_at!r}")
        return cls(usd=usd, tokens=tokens, warn_at=float(warn_at),
                   reset_minutes=parse_reset_time(data.get("reset_time") or "00:00"),
                   rpm=rpm, concurrency=concurrency, models=models,
                   cache=cache, cache_ttl=cache_ttl, _pattern=_compile(models))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what :meth:`parse` reads), without the fields that are not set."""
        if self.unreadable is not None:
            return {}
        out: dict[str, Any] = {f"{p}_usd": v for p, v in self.usd.items()}
        out.update({f"{p}_tokens": v for p, v in self.tokens.items()})
        if self.usd or self.tokens:
            out["warn_at"] = self.warn_at
            out["reset_time"] = self.reset_time
        if self.rpm is not None:
            out["rpm"] = self.rpm
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.models:
            out["models"] = list(self.models)
        if self.cache is not None:
            out["cache"] = self.cache
        if self.cache_ttl is not None:
            out["cache_ttl"] = self.cache_ttl
        return out


def parse_reset_time(value: Any) -> int:
    """``"HH:MM"`` (UTC) as minutes after midnight."""
    match = _TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"reset_time must be a UTC time of day as HH:MM, got {value!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return kind(value)


def _optional(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is None:
        return None
    number = _number(name, value, kind)
    if number < 1:
        raise ValueError(f"{name} must be at least 1 (leave it out for no limit), got {value!r}")
    return number


def _models(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"models must be a list of model names or glob patterns "
                         f"('openai/*'), got {value!r}")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regular expression for all the glob patterns (``*``, ``?``, ``[...]``)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


#: the times an expiry may name: 1970-01-01 up to the end of 9999 (what a date can show)
EXPIRY_MIN = 0.0
EXPIRY_END = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def parse_expiry(value: Any, now: float) -> float | None:
    """An expiry time in epoch seconds from what an operator gives.

    Epoch seconds, an ISO 8601 date or time (``2026-01-31``, ``2026-01-31T18:00:00Z``;
    UTC when no offset is given), or a duration from ``now`` (``30d``, ``12h``, ``2w``).
    ``None`` or ``""`` means "never". The time must fall in the years 1970 to 9999.

    :raises ValueError: none of those, or a time outside those years.
    """
    if value is None or value == "":
        return None
    moment: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = float(value)
    elif isinstance(value, str):
        text = value.strip()
        relative = _RELATIVE.fullmatch(text.lower())
        if relative:
            moment = now + float(relative.group(1)) * _UNIT[relative.group(2)]
        else:
            parsed = _iso_time(text)
            if parsed is not None:
                moment = parsed.timestamp()
    if moment is None:
        raise ValueError(f"expires_at must be epoch seconds, an ISO 8601 date or time "
                         f"('2026-01-31', '2026-01-31T18:00:00Z') or a duration ('30d', "
                         f"'12h'), got {value!r}")
    if not EXPIRY_MIN <= moment <= EXPIRY_END:  # also NaN and infinities
        raise ValueError(f"expires_at must be a time between 1970-01-01 and "
                         f"9999-12-31T23:59:59Z, got {value!r}")
    return moment


def _iso_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
