"""Reading the claims of a JSON Web Token, without verifying it.

Some services put account details in the tokens they issue (ChatGPT's ``id_token``
holds the ``chatgpt_account_id`` its backend wants in a header; access tokens
carry their ``exp``). The gateway only reads them, never trusts them for access:
the service checks its own tokens on every call, so no signature is verified here
(openai/codex does the same: ``decode_jwt_payload`` in ``codex-rs/login``).

:func:`jwt_claims` is careful with what it is given: a token that is not three
dot-separated base64url parts, an oversized one, a payload that is not a JSON
object: each gives None, never an exception, and nothing of the token is logged.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import orjson

#: a longer token is not read (ID tokens are a few kilobytes at most)
MAX_JWT_CHARS = 64 * 1024


def jwt_claims(token: Any) -> dict[str, Any] | None:
    """The payload (claims) of the JWT ``token``, or None when it is not one."""
    if not isinstance(token, str) or len(token) > MAX_JWT_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return None
    try:
        claims = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: Any) -> float | None:
    """The ``exp`` claim of ``token`` (epoch seconds), or None."""
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp) if math.isfinite(exp) and exp > 0 else None
