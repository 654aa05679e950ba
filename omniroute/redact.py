"""Credentials out of what is stored: the one redactor of stored bodies and audit diffs.

Two rules, applied to parsed JSON (dicts and lists walked, never text searched
for quotes, so the cost is linear in the body whatever its content):

* **By name.** The value of a field whose name has a word ``key``, ``keys``,
  ``token``, ``auth`` (or ``bearer``, ``session``, ``pwd``, ``passwd``), or a
  word containing ``secret``, ``password``, ``passphrase``, ``credential``,
  ``cookie``, ``signature``, ``authoriz``, ``authentic``, ``apikey`` ... is
  masked, whatever its type: ``api_key``, ``apiKey``, ``x-api-key``,
  ``Ocp-Apim-Subscription-Key``, ``client_key``, ``access_key``, ``keys``,
  ``X-Custom-Auth``, ``access_token``, ``Authorization``, ``credentials``... Words
  are split at ``_``, ``-``, ``.``, spaces and camel-case humps. Not masked: a name
  whose last word says it is an identifier, a kind or a count (``key_id``,
  ``keyPrefix``, ``auth_type``, ``token_url``, ``tokenLimit``, ``session_ttl``), and
  token *counts* (``max_tokens``, ``input_tokens``: ``tokens`` is not a secret word).
* **By shape**, in every string: ``Bearer`` tokens, API keys (``sk-...``, which
  covers this gateway's ``sk-or-`` and Anthropic's ``sk-ant-``; Google's
  ``AIza...``) and JSON Web Tokens become ``[REDACTED]``. Each pattern can start
  a match only where a run of key characters starts, so a scan is linear too.

:func:`redact` takes a ``mask`` for the values found by name: stored bodies
hide them whole (:func:`hide`), the audit log keeps a key's first and last
characters so an operator recognises it (:func:`omniroute.vault.mask`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

REDACTED = "[REDACTED]"
#: deeper structures than this are replaced (orjson itself refuses past 1024)
MAX_DEPTH = 64

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SECRET_WORDS = frozenset({"key", "keys", "token", "auth", "bearer", "session", "pwd",
                           "passwd"})
_SECRET_PARTS = ("secret", "password", "passphrase", "credential", "cookie", "signature",
                 "authoriz", "authentic", "apikey", "privatekey", "accesskey")
#: a word ending so is a secret (``accesstoken``, ``refreshtoken``); ``tokens`` is a count
_SECRET_ENDS = ("token",)
#: a last word that makes the name an identifier, a kind or a count, not a secret
_NOT_SECRET_LAST = frozenset({"id", "ids", "prefix", "name", "names", "type", "kind", "mode",
                              "method", "scheme", "url", "uri", "endpoint", "count", "limit",
                              "limits", "ttl", "expires", "expiry", "at", "header", "source"})
# a pattern starts only at the start of a run of key characters: linear, not quadratic
_SECRETS = re.compile(
    r"(?<![A-Za-z0-9])(?i:bearer)\s+[A-Za-z0-9\-._~+/]{8,}+=*"
    r"|(?<![A-Za-z0-9_\-])sk-[A-Za-z0-9_\-]{12,}+"
    r"|(?<![A-Za-z0-9_\-])AIza[0-9A-Za-z_\-]{30,}+"
    r"|(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]*+")

Mask = Callable[[str, Any], Any]


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a field of this name holds a credential (see the module)."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words or (len(words) > 1 and words[-1] in _NOT_SECRET_LAST):
        return False
    for word in words:
        if (word in _SECRET_WORDS or word.endswith(_SECRET_ENDS)
                or any(part in word for part in _SECRET_PARTS)):
            return True
    return False


def _secret(match: re.Match[str]) -> str:
    return f"Bearer {REDACTED}" if match.group(0)[:6].lower() == "bearer" else REDACTED


def scrub(text: str) -> str:
    """``text`` with every credential-shaped value replaced (linear in its length)."""
    return _SECRETS.sub(_secret, text)


def hide(name: str, value: Any) -> Any:
    """A secret field's value in a stored body: gone, whatever it was."""
    return value if value is None or value == "" else REDACTED


def redact(value: Any, mask: Mask = hide, depth: int = 0) -> Any:
    """``value`` (parsed JSON) with every secret field's value masked by ``mask(name,
    value)`` and every string scrubbed (:func:`scrub`)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return REDACTED
        return {k: (mask(k, v) if is_secret_name(k) else redact(v, mask, depth + 1))
                for k, v in value.items()}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return REDACTED
        return [redact(v, mask, depth + 1) for v in value]
    return value


def redact_text(text: str) -> str:
    """A body as text, redacted: JSON is parsed and redacted (and written compactly);
    an event stream's ``data:`` lines each so; any other text is scrubbed."""
    try:
        return orjson.dumps(redact(orjson.loads(text))).decode()
    except orjson.JSONDecodeError:
        pass
    if "data:" not in text:
        return scrub(text)
    return "\n".join(_line(line) for line in text.split("\n"))


def _line(line: str) -> str:
    if not line.startswith("data:"):
        return scrub(line)
    payload = line[5:].strip()
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return scrub(line)
    return "data: " + orjson.dumps(redact(parsed)).decode()
