"""Fake Anthropic Messages API as a Claude subscription (OAuth) token sees it.

:class:`FakeClaudeCode` is :class:`~fakes.anthropic_upstream.FakeAnthropic` (the same
wire format, replies and faults) with what the real API demands of a request made on
a Claude Pro/Max OAuth token, each refused in Anthropic's error shape:

- ``Authorization: Bearer <token>`` with a token ``is_valid`` accepts (the fake
  authorization server's ``is_valid``): missing or wrong, 401 ``authentication_error``;
  an ``x-api-key`` is not a subscription token (401);
- ``anthropic-beta`` holding ``oauth-2025-04-20`` (401 "OAuth authentication is
  currently not supported." without it);
- on ``/v1/messages`` (and ``count_tokens``), a system prompt whose first text block
  (the second when the first is Claude Code's own ``x-anthropic-billing-header``
  block) starts with "You are Claude Code, Anthropic's official CLI for Claude"
  (400 "This credential is only authorized for use with Claude Code...").

``requests`` records every request as in every fake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from fakes.anthropic_upstream import FakeAnthropic, _ant_error

IDENTITY_START = "You are Claude Code, Anthropic's official CLI for Claude"
ONLY_CLAUDE_CODE = ("This credential is only authorized for use with Claude Code and cannot "
                    "be used for other API requests.")


def has_identity(system: Any) -> bool:
    """The real API's check, as the sources describe it (see docs/subscriptions.md)."""
    if isinstance(system, str):
        return system.startswith(IDENTITY_START)
    if not isinstance(system, list):
        return False
    texts = [b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text"]
    if texts and texts[0].startswith("x-anthropic-billing-header"):
        texts = texts[1:]
    return bool(texts) and texts[0].startswith(IDENTITY_START)


class FakeClaudeCode(FakeAnthropic):
    """See the module docstring."""

    def __init__(self, is_valid: Callable[[str], bool], **knobs: Any) -> None:
        super().__init__(api_key="unused", **knobs)
        self.is_valid = is_valid

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key"):
            return _ant_error(401, "invalid x-api-key")
        value = request.headers.get("Authorization", "")
        if not value.startswith("Bearer ") or not value[7:]:
            return _ant_error(401, "x-api-key header is required")
        betas = [b.strip() for b in request.headers.get("anthropic-beta", "").split(",")]
        if "oauth-2025-04-20" not in betas:
            return _ant_error(401, "OAuth authentication is currently not supported.")
        if not self.is_valid(value[7:]):
            return _ant_error(401, "OAuth token has expired. Please obtain a new token or "
                                   "refresh your existing token.")
        return None

    def _refusal(self, request: web.Request, body: Any,
                 check: Callable[[dict[str, Any]], str | None]) -> web.Response | None:
        """Checked after the auth, before the body's own checks (both routes)."""
        if isinstance(body, dict) and not has_identity(body.get("system")):
            return _ant_error(400, ONLY_CLAUDE_CODE, "invalid_request_error")
        return super()._refusal(request, body, check)
