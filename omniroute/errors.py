"""Errors are types that carry an HTTP status and a machine-readable code.

Each client format renders them in its own dialect; this module renders the
OpenAI one (``{"error": {"message", "type", "code", "param"}}``), which is also
the shape of every management API error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


class GatewayError(Exception):
    """Base of every error a client may see.

    ``details``: what a program may read beside the message (a budget refusal's spend,
    limit and reset), scalars by name; each client format places them in its own
    dialect (an OpenAI or Anthropic error object's ``details``, a Gemini error's
    ``ErrorInfo`` metadata; Ollama's errors are a message only).
    """

    status = 500
    type = "server_error"
    code = "internal_error"
    details: Mapping[str, str | int | float | None] | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, str | int | float | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        self.param = param
        self.headers = dict(headers or {})
        if details is not None:
            self.details = details


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ModelNotFound(InvalidRequest):
    code = "model_not_found"


class TargetUnsupported(InvalidRequest):
    """The provider type behind a target cannot serve this kind of request at all."""

    code = "operation_not_supported"


class EmbeddingsNotSupported(TargetUnsupported):
    """The provider type behind a target does not serve embeddings."""

    code = "embeddings_not_supported"


class ImagesNotSupported(TargetUnsupported):
    """The provider type behind a target does not generate images."""

    code = "images_not_supported"


class AuthenticationFailed(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PermissionDenied(GatewayError):
    status, type, code = 403, "permission_error", "permission_denied"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class UpstreamError(GatewayError):
    """The upstream could not be reached or sent a broken response."""

    status, type, code = 502, "upstream_error", "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status, type, code = 504, "timeout_error", "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status, type, code = 503, "server_error", "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    """The server is stopping: a stream still open after the shutdown grace ends with it."""

    code = "shutting_down"


class UpstreamStatusError(GatewayError):
    """The upstream answered with an HTTP error; status and message are passed on."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        upstream_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, status=status, type=type or _type_for(status),
            code=code or f"upstream_{status}", param=param, headers=headers,
        )
        self.body = body
        #: the upstream's rate-limit hints (``retry-after``, ``x-ratelimit-*``,
        #: ``anthropic-ratelimit-*``), names lower-cased; ``headers`` is what the client sees
        self.upstream_headers = {k.lower(): v for k, v in (upstream_headers or {}).items()}
        #: the provider's ``credentials_generation`` when the refused call was sent (set
        #: by the HTTP layer): a 401/403 is retried only with other credentials
        self.credentials_generation: int | None = None

    @property
    def retriable(self) -> bool:
        """Worth trying another account or target (rate limit, server trouble)."""
        return self.status in (408, 409, 429) or self.status >= 500


def _type_for(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "upstream_error" if status >= 500 else "invalid_request_error")


def openai_error_object(err: GatewayError) -> dict[str, Any]:
    """The OpenAI error object (also the Responses API's), with ``details`` when set."""
    error: dict[str, Any] = {"message": err.message, "type": err.type, "param": err.param,
                             "code": err.code}
    if err.details is not None:
        error["details"] = dict(err.details)
    return error


def openai_error_body(err: GatewayError) -> bytes:
    return orjson.dumps({"error": openai_error_object(err)})


def openai_error_response(err: GatewayError) -> web.Response:
    return web.Response(
        body=openai_error_body(err),
        status=err.status,
        content_type="application/json",
        headers=err.headers,
    )


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class RateLimited(GatewayError):
    """Too many requests: try again after ``retry_after`` seconds (sent as ``Retry-After``)."""

    status, type, code = 429, "rate_limit_error", "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", retry_after_header(retry_after))


class ConnectionBusy(RateLimited):
    """A connection's own limits (concurrency, requests per minute) are full.

    The caller moves to the next account, or answers 429 with ``Retry-After``.
    """

    code = "connection_busy"

    def __init__(
        self, message: str, *, connection_id: str = "", retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.connection_id = connection_id


class CircuitOpen(ServiceUnavailable):
    """A provider's circuit breaker is open: nothing is sent to it for a while."""

    code = "circuit_open"

    def __init__(
        self, message: str, *, key: str = "", retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.key = key
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", retry_after_header(retry_after))


class ModelNotAllowed(PermissionDenied):
    """The API key may not use this model (its ``models`` limit)."""

    code = "model_not_allowed"


class ModelUnpriced(PermissionDenied):
    """No price is known for the model, and the API key has a USD budget (fails closed)."""

    code = "model_unpriced"


class BudgetExceeded(RateLimited):
    """The API key spent its budget (USD or tokens) for the window; ``Retry-After`` up to
    the window's reset."""

    code = "budget_exceeded"


class BudgetUnavailable(ServiceUnavailable):
    """The budget store is failing: a key with a budget is refused (fails closed)."""

    code = "budget_unavailable"


class StoredResponsesUnavailable(ServiceUnavailable):
    """The stored Responses (``previous_response_id``, ``GET /v1/responses/{id}``) could
    not be read in time: the gateway's failure, not an unknown id (which is a 400/404)."""

    code = "stored_responses_unavailable"


class IdempotencyConflict(GatewayError):
    """An ``Idempotency-Key`` (or ``X-Request-Id``) already used, within its window, by
    a request with another body, method or path."""

    status, type, code = 409, "invalid_request_error", "idempotency_key_reused"


class IdempotencyTimeout(GatewayError):
    """A duplicate waited for the first request with its key longer than its own bounds."""

    status, type, code = 504, "timeout_error", "idempotency_wait_timeout"


class IdempotencyUnavailable(ServiceUnavailable):
    """The first request's answer cannot be given to a duplicate: it outgrew the bytes an
    answer may keep (``idempotency_max_bytes``), or the duplicate fell too far behind."""

    code = "idempotent_replay_unavailable"
