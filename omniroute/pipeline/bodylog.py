"""Request and response bodies in the usage record: off by default, capped, credentials redacted.

With the ``log_bodies`` setting on, a record carries the client's request body
and the answer (a JSON body, or a stream's bytes as the client got them), each
cut to ``log_body_max_bytes``. Before anything is stored, credentials are
replaced with ``[REDACTED]``:

* the string value of any JSON field named like a credential (``api_key``,
  ``apiKey``, ``x-api-key``, ``key``, ``password``, ``secret``, ``token``,
  ``access_token``, ``authorization``, ``credentials``, ``cookie``...); counts such
  as ``max_tokens`` are numbers, and names such as ``input_tokens`` do not match;
* anywhere in the text: ``Bearer`` tokens, API keys by their shape (``sk-...``,
  which also covers this gateway's own ``sk-or-`` keys and Anthropic's
  ``sk-ant-``; Google's ``AIza...``) and JSON Web Tokens.

Redaction runs on the text before it is cut, over at most :data:`MARGIN` bytes
past the cap, so a secret that straddles the cut is still found.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

REDACTED = "[REDACTED]"
#: bytes read past the cap so a secret cut by it is still recognised
MARGIN = 4096
TRUNCATED = "...[truncated]"

_KEY = re.compile(
    r"(?:^|[_\-.\s]|(?<=[a-z0-9])(?=[A-Z]))"
    r"(?i:api_?key|key|password|passwd|pwd|secret|token|auth|authorization|credentials?"
    r"|cookie)$")
_PAIR = re.compile(r'"((?:[^"\\]|\\.){1,100})"(\s*:\s*)"(?:[^"\\]|\\.)*"')
_SECRETS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*"
    r"|\bsk-[A-Za-z0-9_\-]{12,}"
    r"|\bAIza[0-9A-Za-z_\-]{30,}"
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*")


def _pair(match: re.Match[str]) -> str:
    if _KEY.search(match.group(1)) is None:
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'


def _secret(match: re.Match[str]) -> str:
    text = match.group(0)
    return f"Bearer {REDACTED}" if text[:6].lower() == "bearer" else REDACTED


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[REDACTED]`` (see the module)."""
    return _SECRETS.sub(_secret, _PAIR.sub(_pair, text))


class BodyLog:
    """Renders bodies for the record under one cap (built per request from the settings)."""

    __slots__ = ("cap",)

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def text(self, raw: bytes) -> str:
        """Raw bytes as stored text: redacted, then cut to the cap."""
        cut = len(raw) > self.cap
        text = redact(raw[:self.cap + MARGIN].decode("utf-8", "replace"))
        if cut or len(text) > self.cap:
            return text[:self.cap] + TRUNCATED
        return text

    def request(self, body: object) -> str:
        return self.text(orjson.dumps(body))

    async def tee(self, frames: AsyncIterator[bytes], into: list[bytes]) -> AsyncIterator[bytes]:
        """Pass a stream's chunks on, keeping the first ``cap`` (and the margin) bytes."""
        room = self.cap + MARGIN
        async with aclosing(frames):  # type: ignore[type-var]
            async for chunk in frames:
                if room > 0:
                    into.append(chunk)
                    room -= len(chunk)
                yield chunk
