"""The one middleware: authentication by route class, and errors as JSON.

Route classes are decided by path and fail closed: every ``/api/`` route
needs an admin unless it is listed in :data:`PUBLIC_PATHS`; every other
route is client API and follows ``require_api_key``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from omniroute.appkeys import GATEWAY, PRINCIPAL, STREAM_STARTED
from omniroute.auth.base import ANONYMOUS, Principal
from omniroute.errors import (
    AuthenticationFailed,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    openai_error_response,
)
from omniroute.gateway import Gateway
from omniroute.web.client import OLLAMA_PATHS, client_format_of

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({
    "/",
    "/api/init",
    "/api/monitoring/health",
    "/api/auth/login",
    "/api/auth/logout",
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        routing_error = request.match_info.http_exception
        if routing_error is not None:
            raise routing_error
        gateway = request.app[GATEWAY]
        path = request.path
        if path.startswith("/api/") and path not in OLLAMA_PATHS:
            if path not in PUBLIC_PATHS:
                request[PRINCIPAL] = await authenticate_admin(gateway, request)
        elif path not in PUBLIC_PATHS:
            request[PRINCIPAL] = await authenticate_client(gateway, request)
        return await handler(request)
    except GatewayError as err:
        if request.get(STREAM_STARTED):
            raise  # headers already sent: the stream itself must say what went wrong
        return error_response(request, err)
    except web.HTTPException as exc:
        if request.get(STREAM_STARTED):
            raise
        return error_response(request, _from_http_exception(request, exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if request.get(STREAM_STARTED):
            raise  # headers already sent: aiohttp closes the connection, nothing to add
        return error_response(request, GatewayError("Internal error; see the gateway log."))


def error_response(request: web.Request, err: GatewayError) -> web.Response:
    """``err`` in the error shape of the client API the path belongs to."""
    path = request.path
    if not path.startswith("/api/") or path in OLLAMA_PATHS:
        fmt = request.app[GATEWAY].formats.get(client_format_of(path))
        if fmt is not None:
            try:
                body = fmt.error_body(err)
            except Exception:  # a format plugin's bug must not hide the error itself
                log.exception("format %s could not render an error", fmt.name)
            else:
                return web.Response(body=body, status=err.status,
                                    content_type="application/json", headers=err.headers)
    return openai_error_response(err)


async def authenticate_client(gateway: Gateway, request: web.Request) -> Principal:
    required = gateway.settings.require_api_key
    for scheme in gateway.auth_schemes.values():
        if not scheme.client_api:
            continue
        try:
            principal = await scheme.authenticate(request)
        except AuthenticationFailed:
            if required:
                raise
            return ANONYMOUS  # keys are optional: a wrong one is ignored, not refused
        if principal is not None:
            return principal
    if required:
        raise AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            code="missing_api_key")
    return ANONYMOUS


async def authenticate_admin(gateway: Gateway, request: web.Request) -> Principal:
    for scheme in gateway.auth_schemes.values():
        principal = await scheme.authenticate(request)
        if principal is None:
            continue
        if not principal.is_admin:
            raise PermissionDenied("This API key has no admin scope.")
        return principal
    raise AuthenticationFailed(
        "The management API needs an admin: log in (POST /api/auth/login) "
        "or send an admin-scoped API key.", code="admin_required")


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"Unknown route: {request.method} {request.path}")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.",
                                headers={"Allow": allowed} if allowed else None)
    if exc.status == 413:
        return PayloadTooLarge("Request body is too large.")
    return GatewayError(exc.reason or "HTTP error", status=exc.status,
                        type="invalid_request_error" if exc.status < 500 else "server_error",
                        code=f"http_{exc.status}")
