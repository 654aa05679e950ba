"""How long a connection rests after a failure.

The upstream's own hint wins when it gives one, read in this order:

1. ``Retry-After``: seconds, or an HTTP date;
2. OpenAI's ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``
   (Go-style durations such as ``"1s"``, ``"6m0s"``, ``"20ms"``);
3. Anthropic's ``anthropic-ratelimit-*-reset`` (RFC 3339 times);
4. Gemini's ``google.rpc.RetryInfo`` ``retryDelay`` (``"30s"``) in the error body.

When a limit's ``*-remaining`` header says which one ran out, only its reset
counts; otherwise the latest reset does. Without a hint the delay grows
exponentially with the consecutive failures (:class:`Backoff`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

#: an upstream hint is honoured up to a day (daily quotas); anything longer is a typo
MAX_HINT = 86_400.0

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_OPENAI_LIMITS = ("requests", "tokens")
_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True, slots=True)
class Backoff:
    """``base * factor ** (failures - 1)`` seconds, at most ``cap``."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # bounded exponent: a long failure streak must not overflow a float
        return min(self.cap, self.base * self.factor ** min(failures - 1, 64))


def parse_go_duration(text: str) -> float | None:
    """``"6m0s"`` -> 360.0; ``None`` when ``text`` is not such a duration."""
    text = text.strip()
    if not text:
        return None
    total, pos = 0.0, 0
    for match in _GO_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def parse_retry_after(value: str, now_wall: float) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)


def parse_rfc3339(value: str, now_wall: float) -> float | None:
    """An RFC 3339 time (``2025-01-01T00:00:30Z``) as seconds from now."""
    text = value.strip().replace("z", "Z")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # fromisoformat takes at most microseconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)


def retry_delay_from_body(body: bytes | str | Any) -> float | None:
    """Gemini's ``RetryInfo.retryDelay`` (``"30s"``) from an error body, if present."""
    data = body
    if isinstance(body, (bytes, str)):
        if "retryDelay" not in (body if isinstance(body, str) else body.decode("utf-8", "replace")):
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    if isinstance(data, list):  # older Gemini endpoints wrap the error in a list
        data = data[0] if data else None
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                return parse_go_duration(delay)  # protobuf Duration JSON: "30s", "1.5s"
            if isinstance(delay, dict):  # {"seconds": 30, "nanos": 0}
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
    return None


def _exhausted_resets(
    headers: Mapping[str, str], names: tuple[str, ...], reset: str, remaining: str,
    parse: Any,
) -> float | None:
    found: dict[str, float] = {}
    for name in names:
        raw = headers.get(reset.format(name))
        seconds = parse(raw) if raw is not None else None
        if seconds is not None:
            found[name] = seconds
    if not found:
        return None
    exhausted = [s for n, s in found.items() if headers.get(remaining.format(n), "").strip() == "0"]
    return max(exhausted or found.values())


def hint_from(
    headers: Mapping[str, str] | None, body: bytes | str | None, now_wall: float
) -> float | None:
    """The upstream's own "come back in N seconds", or ``None`` when it gave none."""
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    hint: float | None = None
    if "retry-after" in lower:
        hint = parse_retry_after(lower["retry-after"], now_wall)
    if hint is None and "retry-after-ms" in lower:
        with contextlib.suppress(ValueError):
            hint = max(0.0, float(lower["retry-after-ms"]) / 1000)
    if hint is None:
        hint = _exhausted_resets(lower, _OPENAI_LIMITS, "x-ratelimit-reset-{}",
                                 "x-ratelimit-remaining-{}", parse_go_duration)
    if hint is None:
        hint = _exhausted_resets(lower, _ANTHROPIC_LIMITS, "anthropic-ratelimit-{}-reset",
                                 "anthropic-ratelimit-{}-remaining",
                                 lambda v: parse_rfc3339(v, now_wall))
    if hint is None and body:
        hint = retry_delay_from_body(body)
    return None if hint is None else min(hint, MAX_HINT)
