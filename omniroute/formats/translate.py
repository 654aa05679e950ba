"""Helpers for translators that ``media`` and ``carry`` do not cover.

* effort <-> thinking budget tables, for formats that speak only one of them;
* tool-call arguments as an upstream sent them (text, or an object) -> JSON text;
* text documents carried as base64 in :class:`~omniroute.formats.canonical.File`;
* the marking of a system message that has no place of its own in a format.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

#: a system message later in the conversation, folded into a user turn by formats that
#: have no such message (Claude Code's own convention for context it adds mid-conversation)
SYSTEM_REMINDER = "<system-reminder>\n{}\n</system-reminder>"

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


def arguments_text(value: Any) -> str:
    """Tool-call arguments as JSON text, from what an upstream sent (text or an object)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def b64encode_text(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64decode_text(data: str) -> str | None:
    """UTF-8 text from base64, or None when ``data`` is not base64 of text."""
    try:
        return base64.b64decode(data, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
