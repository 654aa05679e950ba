"""Reasoning effort <-> thinking budget, for formats that speak only one of them."""

from __future__ import annotations

#: canonical effort levels, lowest first (``ReasoningConfig.effort``)
EFFORTS = ("minimal", "low", "medium", "high", "xhigh")

#: thinking budget used for an effort when a format can express only a budget
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}


def effort_for_budget(budget: int) -> str:
    """The effort whose budget (:data:`EFFORT_BUDGETS`) is the nearest at or below ``budget``."""
    if budget < EFFORT_BUDGETS["medium"]:
        return "low"
    if budget < EFFORT_BUDGETS["high"]:
        return "medium"
    return "high"
