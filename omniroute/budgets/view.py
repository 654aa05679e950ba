"""What operators send and see: the seed's ``/api/usage/budget`` shapes, key options.

``POST /api/usage/budget`` takes the seed's ``{"keyId": "key-123", "limit": 50.00,
"period": "monthly"}`` or the richer shape (``daily`` / ``weekly`` / ``monthly``,
also spelled ``dailyLimitUsd`` ..., ``warningThreshold``, ``resetTime``, and token
limits ``dailyTokens`` ...); :func:`budget_changes` turns either into changes of
the key's :class:`~omniroute.budgets.limits.Limits`. :func:`budget_view` is one
key's entry of ``GET /api/usage/budget`` (and of ``omniroute budget show``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniroute.budgets.ledger import Budgets
from omniroute.budgets.limits import FIELDS, PERIODS, Limits, parse_expiry
from omniroute.budgets.windows import iso
from omniroute.storage.store import ApiKey

#: the richer shape's names for each limit field (the flat names are accepted too)
_ALIASES: dict[str, tuple[str, ...]] = {
    **{f"{p}_usd": (p, f"{p}LimitUsd", f"{p}_limit_usd", f"{p}_usd") for p in PERIODS},
    **{f"{p}_tokens": (f"{p}Tokens", f"{p}_tokens") for p in PERIODS},
    "warn_at": ("warningThreshold", "warning_threshold", "warn_at"),
    "reset_time": ("resetTime", "reset_time"),
}
_KEY_FIELDS = ("keyId", "apiKeyId", "key_id", "key")


def budget_changes(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(key id or name, limit changes)`` from a ``POST /api/usage/budget`` body.

    :raises ValueError: no key, an unknown period, or a field of the wrong type.
    """
    key = next((body[f] for f in _KEY_FIELDS if body.get(f) is not None), None)
    if not isinstance(key, str) or not key.strip():
        raise ValueError('Name the key: {"keyId": "key-123", "limit": 50.00, '
                         '"period": "monthly"}.')
    changes: dict[str, Any] = {}
    if "limit" in body or "period" in body:
        period = body.get("period", "monthly")
        if period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
        changes[f"{period}_usd"] = body.get("limit")
    for name, spellings in _ALIASES.items():
        for spelling in spellings:
            if spelling in body:
                changes[name] = body[spelling]
    warn_at = changes.get("warn_at")
    if isinstance(warn_at, int | float) and not isinstance(warn_at, bool) and 1 < warn_at <= 100:
        changes["warn_at"] = warn_at / 100  # the seed's dashboard sends a percentage
    if not changes:
        raise ValueError("Send a limit: {\"limit\": 50.00, \"period\": \"monthly\"}, or "
                         "daily / weekly / monthly, warningThreshold, resetTime.")
    return key.strip(), changes


def key_options(body: Mapping[str, Any], current: ApiKey | None, now: float) -> dict[str, Any]:
    """``Store.create_key`` / ``update_key`` arguments from a key request's body.

    ``limits`` (flat field names, merged into the current ones; ``null`` removes one),
    ``expires_at`` (see :func:`~omniroute.budgets.limits.parse_expiry`) and ``log_usage``.

    :raises ValueError: a field that cannot be used.
    """
    options: dict[str, Any] = {}
    if "limits" in body:
        changes = body["limits"]
        if not isinstance(changes, dict):
            raise ValueError(f"limits must be an object with any of {', '.join(FIELDS)}")
        options["limits"] = merged_limits(current.limits if current else None, changes)
    if "expires_at" in body:
        options["expires_at"] = parse_expiry(body["expires_at"], now)
    if "log_usage" in body:
        if not isinstance(body["log_usage"], bool):
            raise ValueError(f"log_usage must be true or false, got {body['log_usage']!r}")
        options["log_usage"] = body["log_usage"]
    return options


def merged_limits(current: Limits | None, changes: Mapping[str, Any]) -> Limits | None:
    """``current`` with ``changes`` applied: a ``None`` value removes that limit."""
    data = current.as_dict() if current is not None else {}
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return Limits.parse(data)


def budget_view(key: ApiKey, budgets: Budgets) -> dict[str, Any]:
    """One key's budget: the binding window's spend, limit, period, remaining and reset
    (the seed's fields), every window, and the seed dashboard's names for them."""
    limits = key.limits
    now = budgets.clock.time()
    view: dict[str, Any] = {
        "keyId": key.id, "name": key.name, "limit": None, "period": None, "spend": None,
        "remaining": None, "reset": None, "windows": [],
        "warningThreshold": limits.warn_at if limits else None,
        "resetTime": limits.reset_time if limits else None,
        **{f"{p}LimitUsd": limits.usd.get(p) if limits else None for p in PERIODS},
        "expiresAt": iso(key.expires_at) if key.expires_at is not None else None,
    }
    if limits is None or not limits.periods:
        view["budgetCheck"] = {"allowed": True, "remaining": None}
        return view
    state = budgets.state(key.id)
    binding: dict[str, Any] | None = None
    for period in limits.periods:
        w = budgets.window(state, limits, period, now)
        limit, cap = limits.usd.get(period), limits.tokens.get(period)
        entry = {
            "period": period, "limit": limit, "spend": round(w.spent_usd, 6),
            "remaining": round(max(0.0, limit - w.spent_usd), 6) if limit is not None else None,
            "reset": iso(w.end), "windowStart": iso(w.start),
            "tokens": w.spent_tokens, "tokenLimit": cap,
            "tokensRemaining": max(0, cap - w.spent_tokens) if cap is not None else None,
            "requests": w.spent_requests,
        }
        view["windows"].append(entry)
        if limit is not None and (binding is None or entry["remaining"] < binding["remaining"]):
            binding = entry
    by_period = {e["period"]: e for e in view["windows"]}
    view["totalCostToday"] = by_period["daily"]["spend"] if "daily" in by_period else None
    view["totalCostMonth"] = by_period["monthly"]["spend"] if "monthly" in by_period else None
    view["reserved"] = round(state.reserved_usd, 6)
    view["inFlight"] = state.in_flight
    if binding is not None:
        view.update(limit=binding["limit"], period=binding["period"], spend=binding["spend"],
                    remaining=binding["remaining"], reset=binding["reset"])
    exhausted = any(
        (e["remaining"] is not None and e["remaining"] <= 0)
        or (e["tokensRemaining"] is not None and e["tokensRemaining"] <= 0)
        for e in view["windows"])
    view["budgetCheck"] = {"allowed": not exhausted, "remaining": view["remaining"]}
    return view
