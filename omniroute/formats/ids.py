"""Generated ids: fresh random ones, and stable ones derived from what they name."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson


def _token() -> str:
    return uuid.uuid4().hex


def new_id(prefix: str) -> str:
    """A fresh random id such as ``resp_…`` or ``call_…``."""
    return prefix + _token()


def stable_id(prefix: str, *parts: Any) -> str:
    """An id derived from ``parts``: the same history always gets the same ids."""
    digest = hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:24]
    return prefix + digest
