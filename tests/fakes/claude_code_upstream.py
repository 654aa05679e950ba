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

Every answer of the Messages routes (success or error, but for the 401s) carries the
subscription's unified rate-limit headers (``anthropic-ratelimit-unified-*``, shapes as
docs/subscriptions.md records them): ``usage`` holds each window's utilization (a
0..1 fraction) and seconds to its reset (``send_usage = False`` leaves them out).
``usage_limit(window, resets_in)`` scripts the 429 of a spent subscription
(``rejected``, with that window's reset).

``requests`` records every request as in every fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fakes.anthropic_upstream import Behaviour, FakeAnthropic, _ant_error, error

IDENTITY_START = "You are Claude Code, Anthropic's official CLI for Claude"
ONLY_CLAUDE_CODE = ("This credential is only authorized for use with Claude Code and cannot "
                    "be used for other API requests.")


#: the representative claim of each window
CLAIMS = {"5h": "five_hour", "7d": "seven_day"}


def unified_headers(usage: dict[str, tuple[float, float]], *,
                    rejected: str | None = None) -> dict[str, str]:
    """The headers of one answer: per window ``(utilization, seconds to reset)``; the
    binding window is the most used one, or ``rejected``, which is refused."""
    now = time.time()
    binding = rejected or max(usage, key=lambda name: usage[name][0])
    headers = {}
    for name, (used, resets_in) in usage.items():
        status = ("rejected" if name == rejected else
                  "allowed_warning" if used >= 0.8 else "allowed")
        headers.update({f"anthropic-ratelimit-unified-{name}-status": status,
                        f"anthropic-ratelimit-unified-{name}-utilization": f"{used:g}",
                        f"anthropic-ratelimit-unified-{name}-reset": str(int(now + resets_in))})
    overall = ("rejected" if rejected else "allowed_warning"
               if usage[binding][0] >= 0.8 else "allowed")
    headers.update({
        "anthropic-ratelimit-unified-status": overall,
        "anthropic-ratelimit-unified-reset": str(int(now + usage[binding][1])),
        "anthropic-ratelimit-unified-representative-claim": CLAIMS.get(binding, binding),
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled"})
    return headers


def usage_limit(window: str = "5h", resets_in: float = 3.0,
                usage: dict[str, tuple[float, float]] | None = None) -> Behaviour:
    """The 429 of a subscription whose ``window`` is spent until ``resets_in`` seconds
    from now (its ``retry-after`` says a second, as the generic 429 does)."""
    windows = dict(usage or {"5h": (0.4, 3600.0), "7d": (0.3, 4 * 86400.0)})
    windows[window] = (1.0, resets_in)
    return error(429, "This request would exceed your account's rate limit. Please try "
                 "again later.", "rate_limit_error",
                 headers=unified_headers(windows, rejected=window))


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
        #: each window's (utilization, seconds to its reset), as every answer reports it
        self.usage: dict[str, tuple[float, float]] = {"5h": (0.21, 3 * 3600.0),
                                                      "7d": (0.05, 4 * 86400.0)}
        #: False: answers carry none (a 429 that is a mere throttle has none)
        self.send_usage = True
        self.app.on_response_prepare.append(self._unified)

    async def _unified(self, request: web.Request, response: web.StreamResponse) -> None:
        """The unified headers on each Messages answer (a scripted answer's own win)."""
        if (self.send_usage and request.path.startswith("/v1/messages")
                and response.status != 401):
            for name, value in unified_headers(self.usage).items():
                response.headers.setdefault(name, value)

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
