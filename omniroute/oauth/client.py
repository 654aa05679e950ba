"""The token-endpoint client: one POST, a typed answer or a typed error.

Bodies go as JSON or as ``application/x-www-form-urlencoded`` (each service says
which); answers are read as JSON (``Accept: application/json``, which also makes
GitHub answer JSON). An ``error`` field becomes the matching error type of
:mod:`omniroute.oauth.errors`, also on a 200 (GitHub's device flow answers pending
polls so); Anthropic-shaped errors (``{"error": {"type", "message"}}``) are read
too. Every call is bounded by ``timeout``; nothing of a request or an answer body is
ever logged, and an endpoint's description is scrubbed of anything token-shaped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp
import orjson

from omniroute.oauth.errors import (
    AccessDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidGrant,
    OAuthError,
    OAuthUnavailable,
    SlowDown,
)
from omniroute.oauth.tokens import TokenSet
from omniroute.redact import scrub

Encoding = Literal["json", "form"]

#: RFC 6749 / RFC 8628 error codes with a type of their own
_ERRORS: dict[str, type[OAuthError]] = {
    "invalid_grant": InvalidGrant,
    "access_denied": AccessDenied,
    "authorization_pending": AuthorizationPending,
    "slow_down": SlowDown,
    "expired_token": ExpiredToken,
}
_DESCRIPTION_MAX = 300


class TokenClient:
    """POSTs to OAuth endpoints with the gateway's (or the CLI's) HTTP session."""

    def __init__(
        self, http: aiohttp.ClientSession, *, timeout: float = 30.0,
        headers: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        """
        :param http: the session to use (not closed here).
        :param timeout: seconds one call may take, connect to last byte.
        :param headers: sent with every call (a service's ``User-Agent``).
        :param clock: epoch seconds (``expires_in`` counts from it).
        """
        self.http = http
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.clock = clock

    async def post(
        self, url: str, body: Mapping[str, Any], *, encoding: Encoding = "form",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` to ``url``; the JSON object answered.

        :raises OAuthError: (a subclass of) the endpoint's refusal, or
            :class:`OAuthUnavailable` when it cannot be reached, times out or fails.
        """
        sent = {"Accept": "application/json", **self.headers, **(headers or {})}
        kwargs: dict[str, Any]
        if encoding == "json":
            kwargs = {"data": orjson.dumps(dict(body)),
                      "headers": {**sent, "Content-Type": "application/json"}}
        else:
            kwargs = {"data": {k: str(v) for k, v in body.items() if v is not None},
                      "headers": sent}
        try:
            async with self.http.post(url, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                      **kwargs) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise OAuthUnavailable(f"{_where(url)} did not answer within "
                                   f"{self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise OAuthUnavailable(f"{_where(url)} is unreachable: "
                                   f"{type(exc).__name__}") from None
        data = _parse(raw)
        failure = _failure(url, status, data, raw)
        if failure is not None:
            raise failure
        if not isinstance(data, dict):
            raise OAuthError(f"{_where(url)} answered something that is not a JSON object")
        return data

    async def tokens(
        self, url: str, body: Mapping[str, Any], *, encoding: Encoding = "form",
        previous: TokenSet | None = None, headers: Mapping[str, str] | None = None,
    ) -> TokenSet:
        """POST a token request; the token set it answered with.

        :param previous: the set being renewed (see :meth:`TokenSet.from_response`).
        """
        data = await self.post(url, body, encoding=encoding, headers=headers)
        try:
            return TokenSet.from_response(data, now=self.clock(), previous=previous)
        except ValueError:
            raise OAuthError(f"{_where(url)} answered without an access_token") from None


def _where(url: str) -> str:
    """The endpoint named in messages: scheme, host and path, never a query."""
    return url.split("?", 1)[0]


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return None


def _failure(url: str, status: int, data: Any, raw: bytes) -> OAuthError | None:
    """The error an answer stands for, or None when it is a success."""
    error, description = _error_fields(data)
    if error is None and status < 400:
        return None
    if status >= 500:
        return OAuthUnavailable(f"{_where(url)} failed: HTTP {status}"
                                + (f" ({error})" if error else ""), error=error,
                                upstream_status=status)
    if error is None and not isinstance(data, dict):
        text = scrub(raw.decode("utf-8", "replace").strip())[:_DESCRIPTION_MAX]
        return OAuthError(f"{_where(url)} answered HTTP {status}: {text or 'no body'}",
                          upstream_status=status)
    kind = _ERRORS.get(error or "", OAuthError)
    said = f"{error}: {description}" if description else (error or f"HTTP {status}")
    return kind(f"{_where(url)} refused: {said}", error=error, upstream_status=status)


def _error_fields(data: Any) -> tuple[str | None, str | None]:
    """``error`` and ``error_description`` (RFC 6749); or an error object's ``code``
    (OpenAI's shape: ``refresh_token_expired``), else its ``type`` (Anthropic's), and
    its ``message``. Descriptions scrubbed and cut short."""
    if not isinstance(data, dict):
        return None, None
    error: Any = data.get("error")
    description: Any = data.get("error_description")
    if isinstance(error, dict):
        code, description = error.get("code"), error.get("message")
        error = code if isinstance(code, str) and code else error.get("type")
    error = error if isinstance(error, str) and error else None
    if not isinstance(description, str) or not description:
        description = None
    else:
        description = scrub(description)[:_DESCRIPTION_MAX]
    return error, description
