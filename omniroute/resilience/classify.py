r"""What an upstream failure means: move to the next target or not, and what
happens to the connection that failed.

:func:`classify` turns an exception (or :func:`classify_status` an HTTP
answer) into a :class:`Classification`:

============================================  ========  =========  =======
failure                                       move on   penalty    breaker
============================================  ========  =========  =======
connection error, malformed answer             yes      cooldown   counts
timeout, HTTP 408                              yes      cooldown   counts
HTTP 5xx                                       yes      cooldown   counts
HTTP 429, quota answers (any 4xx)              yes      cooldown   -
HTTP 401 / 403                                 yes      cooldown*  -
credentials revoked / invalid, account banned  yes      terminal   -
or deactivated, credits or billing exhausted,
HTTP 402
HTTP 404, 4xx "model not found/not supported"  yes      none       -
4xx "context too long"                         yes      none       -
any other 4xx                                  no       none       -
============================================  ========  =========  =======

\* when the provider can refresh its credentials and has not yet done so for
this request, a 401/403 asks for a refresh (``refresh=True``) and leaves the
connection alone; the retry's failure is then classified with
``can_refresh=False``.

Message patterns are looked up per provider wire format (``openai``,
``anthropic``, ``gemini``, ``ollama``) and then in a generic list; an unknown
format gets only the generic one. Quota and billing patterns are checked
before "context too long" so that a rate limit worded loosely is never
mistaken for an oversized prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.resilience.cooldown import hint_from

Penalty = Literal["cooldown", "terminal", "none"]

#: kinds of failure (``Classification.kind``)
CONNECTION, TIMEOUT, SERVER, RATE_LIMITED, QUOTA = (
    "connection", "timeout", "server_error", "rate_limited", "quota")
AUTH, TERMINAL, MODEL_NOT_FOUND, MODEL_NOT_SUPPORTED, CONTEXT_TOO_LONG, CLIENT = (
    "auth", "terminal", "model_not_found", "model_not_supported", "context_too_long",
    "client_error")


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one failure."""

    kind: str
    #: try the next target (False: the answer goes back to the client unchanged)
    move_on: bool
    penalty: Penalty = "none"
    #: seconds the upstream asked us to wait (``Retry-After`` and friends), if it said
    retry_after: float | None = None
    #: why the connection is out until an operator acts (``penalty == "terminal"``)
    terminal_reason: str | None = None
    #: refresh the connection's credentials and retry it once before moving on
    refresh: bool = False
    #: counts towards the provider's circuit breaker (the provider itself is in trouble)
    breaker: bool = False
    status: int | None = None
    message: str = ""


def _compile(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


#: (reason, patterns): the account is out until an operator acts
_TERMINAL: dict[str, tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]] = {
    "openai": (
        ("billing", _compile(r"insufficient_quota", r"billing_hard_limit_reached",
                             r"billing_not_active")),
        ("account_deactivated", _compile(r"account_deactivated", r"access_terminated",
                                         r"your account is not active")),
    ),
    "anthropic": (
        ("billing", _compile(r"credit balance is too low")),
        ("account_deactivated", _compile(
            r"organization has been disabled",
            r"organization .{0,40}(is|has been) (disabled|suspended)")),
    ),
    "gemini": (
        ("billing", _compile(r"requires billing to be enabled",
                             r"billing account .{0,40}(disabled|closed)")),
        ("account_deactivated", _compile(r"consumer_suspended",
                                         r"project .{0,80}has been suspended")),
        ("credentials_invalid", _compile(r"api_key_invalid", r"api key expired",
                                         r"api key not valid")),
    ),
    "ollama": (),
    "generic": (
        ("billing", _compile(r"insufficient[ _](credits?|balance|funds)", r"credit balance",
                             r"out of credits", r"payment required",
                             r"billing .{0,20}(not active|inactive|disabled|hard limit)")),
        ("account_deactivated", _compile(
            r"\b(account|organi[sz]ation|user|project)\b.{0,40}\b(deactivated|suspended|banned|"
            r"disabled|terminated)\b", r"account_(deactivated|suspended|banned)")),
        ("credentials_revoked", _compile(
            r"\b(key|token|credential|access)s?\b.{0,40}\brevoked\b")),
    ),
}

#: after a refused credential (401/403): these mean it will never work again
_INVALID_CREDENTIALS = _compile(
    r"invalid_api_key", r"incorrect api key", r"invalid (x-)?api[ -]?key", r"api key not valid",
    r"api_key_invalid", r"invalid authentication", r"invalid_authentication")

#: a 429 that speaks of a quota rather than a rate
_QUOTA_WORDS = _compile(r"quota", r"resource_exhausted", r"usage limit")

#: temporary limits worded as 4xx other than 429
_QUOTA: dict[str, tuple[re.Pattern[str], ...]] = {
    "openai": _compile(r"rate_limit_exceeded", r"rate limit reached"),
    "anthropic": _compile(r"rate_limit_error", r"usage limit", r"overloaded_error"),
    "gemini": _compile(r"resource_exhausted", r"quota exceeded"),
    "ollama": _compile(r"too many requests", r"server busy"),
    "generic": _compile(r"rate[ _-]?limit", r"quota", r"too many requests", r"usage limit"),
}

_CONTEXT: dict[str, tuple[re.Pattern[str], ...]] = {
    "openai": _compile(r"context_length_exceeded", r"maximum context length",
                       r"reduce the length of the (messages|prompt|input)"),
    "anthropic": _compile(r"prompt is too long", r"exceed(s)? context limit",
                          r"input length and `?max_tokens`? exceed"),
    "gemini": _compile(r"input token count .{0,40}exceeds the maximum",
                       r"exceeds the maximum number of tokens"),
    "ollama": _compile(r"input length exceeds the (maximum )?context length",
                       r"exceeds the context (length|window)"),
    "generic": _compile(r"context[ _-]?(length|window|size)", r"too many (input )?tokens",
                        r"token limit", r"(prompt|input|request) is too long",
                        r"maximum (input )?tokens? .{0,20}exceeded"),
}

_MODEL: dict[str, tuple[re.Pattern[str], ...]] = {
    "openai": _compile(r"model_not_found", r"the model `?[^`\s]*`? does not exist",
                       r"does not have access to model", r"is not a chat model"),
    "anthropic": _compile(r"not_found_error.{0,80}model", r"\bmodel: \S+"),
    "gemini": _compile(r"models/\S+ is not found", r"is not supported for generatecontent"),
    "ollama": _compile(r"model \"?[^\"\s]*\"? not found", r"try pulling it first",
                       r"does not support (tools|chat|generate|insert|vision|thinking)"),
    "generic": _compile(r"model[ _]not[ _]found", r"unknown model", r"no such model",
                        r"(unsupported|invalid) model",
                        r"model\b.{0,80}\b(is not supported|not supported|does not exist|"
                        r"is not available|not available|unavailable)",
                        r"not supported by (this|the) model", r"model does not support"),
}


def _patterns(table: Mapping[str, tuple], fmt: str) -> tuple:
    return table.get(fmt, ()) + table["generic"] if fmt != "generic" else table["generic"]


def _matches(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def _text_of(message: str, body: bytes | str | None) -> str:
    """The message plus the error body's own message, code, type and status fields."""
    parts = [message]
    if body:
        raw = body if isinstance(body, str) else body.decode("utf-8", "replace")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parts.append(raw[:2000])
        else:
            parts.append(raw[:2000] if not isinstance(data, (dict, list)) else _fields(data))
    return " | ".join(p for p in parts if p)


def _fields(data: object, depth: int = 0) -> str:
    if depth > 4:
        return ""
    if isinstance(data, dict):
        return " ".join(_fields(v, depth + 1) for v in data.values())
    if isinstance(data, list):
        return " ".join(_fields(v, depth + 1) for v in data[:8])
    return str(data) if isinstance(data, (str, int)) and not isinstance(data, bool) else ""


def classify_status(
    status: int,
    *,
    message: str = "",
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    format: str = "openai",  # a provider's wire format name
    can_refresh: bool = False,
    now_wall: float = 0.0,
) -> Classification:
    """Classify an HTTP error answer from an upstream.

    :param format: the provider's wire format (picks the message patterns).
    :param can_refresh: the provider can refresh its credentials and has not yet for this request.
    :param now_wall: wall-clock seconds (for ``Retry-After`` HTTP dates and RFC 3339 resets).
    """
    fmt = format if format in _CONTEXT else "generic"
    text = _text_of(message, body)
    hint = hint_from(headers, body, now_wall)

    def verdict(kind: str, move_on: bool, penalty: Penalty = "none", *, breaker: bool = False,
                reason: str | None = None, refresh: bool = False) -> Classification:
        return Classification(kind, move_on, penalty, hint if penalty == "cooldown" else None,
                              reason, refresh, breaker, status, message)

    if status >= 500 or status < 400:  # (below 400: an error without an error status)
        return verdict(SERVER, True, "cooldown", breaker=True)
    if status == 408:
        return verdict(TIMEOUT, True, "cooldown", breaker=True)
    if status in (400, 401, 402, 403, 429):
        for reason, patterns in _TERMINAL.get(fmt, ()) + _TERMINAL["generic"]:
            if _matches(patterns, text):
                return verdict(TERMINAL, True, "terminal", reason=reason)
    if status == 402:
        return verdict(TERMINAL, True, "terminal", reason="billing")
    if status == 429:
        return verdict(QUOTA if _matches(_QUOTA_WORDS, text) else RATE_LIMITED, True, "cooldown")
    if status == 403 and _matches(_patterns(_MODEL, fmt), text):
        return verdict(MODEL_NOT_SUPPORTED, True)
    if status in (401, 403):
        if can_refresh:
            return verdict(AUTH, True, refresh=True)
        if _matches(_INVALID_CREDENTIALS, text):
            return verdict(TERMINAL, True, "terminal", reason="credentials_invalid")
        if status == 403 and _matches(_patterns(_QUOTA, fmt), text):
            return verdict(QUOTA, True, "cooldown")
        return verdict(AUTH, True, "cooldown")
    if status == 404:
        return verdict(MODEL_NOT_FOUND, True)
    if _matches(_patterns(_QUOTA, fmt), text):
        return verdict(QUOTA, True, "cooldown")
    if _matches(_patterns(_CONTEXT, fmt), text):
        return verdict(CONTEXT_TOO_LONG, True)
    if _matches(_patterns(_MODEL, fmt), text):
        return verdict(MODEL_NOT_SUPPORTED, True)
    return verdict(CLIENT, False)


def classify(
    error: BaseException,
    *,
    format: str = "openai",
    can_refresh: bool = False,
    now_wall: float = 0.0,
) -> Classification:
    """Classify an exception raised while calling an upstream.

    HTTP answers (:class:`~omniroute.errors.UpstreamStatusError`, or any
    :class:`~omniroute.errors.GatewayError` with an upstream status) go through
    :func:`classify_status`; timeouts and unreachable or broken upstreams move
    on with a cooldown. Anything else is not the upstream's doing: it does not
    move on and costs the connection nothing.
    """
    if isinstance(error, UpstreamStatusError):
        # ``upstream_headers`` (when the provider layer keeps them) hold every rate-limit
        # hint; ``headers`` only what the client is shown
        headers = {**error.headers, **getattr(error, "upstream_headers", {})}
        return classify_status(error.status, message=error.message, body=error.body,
                               headers=headers, format=format, can_refresh=can_refresh,
                               now_wall=now_wall)
    if isinstance(error, (UpstreamTimeout, TimeoutError)):
        return Classification(TIMEOUT, True, "cooldown", breaker=True, message=str(error))
    if isinstance(error, (UpstreamError, ConnectionError)):
        hint = hint_from(error.headers, None, now_wall) if isinstance(error, GatewayError) else None
        return Classification(CONNECTION, True, "cooldown", retry_after=hint, breaker=True,
                              message=str(error))
    return Classification(CLIENT, False, message=str(error))
