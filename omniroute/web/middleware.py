"""The one middleware: the Host check, authentication by route class, and errors as JSON.

Each route carries a tag (:mod:`omniroute.web.tags`) naming its access class
and its client API: ``admin`` routes need an admin, ``client`` routes follow
``require_api_key``, ``public`` ones need nothing. An untagged route (a
plugin's) is classed by path, failing closed: under ``/api/`` it needs an
admin. Errors take the error shape of the route's client API; an unknown route
takes that of the format whose paths it lies under (a Gemini 404 under
``/v1beta/``). The Host check (:mod:`omniroute.web.security`) comes first, so
a refused name learns nothing else. A call of an audited route (a management
call that changes state, a login) leaves an audit entry with its final status,
refusals included, and the change it made (:mod:`omniroute.web.audit`); other
routes pay one flag read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import hdrs, web

from omniroute.appkeys import (
    AUTH_SCHEMES,
    CATALOG,
    PRINCIPAL,
    REGISTRY,
    STREAM_STARTED,
    WATCHER,
)
from omniroute.auth.base import ANONYMOUS, AuthScheme, Principal
from omniroute.bodies import KEPT_BODY
from omniroute.errors import (
    AuthenticationFailed,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    openai_error_response,
)
from omniroute.formats.base import Format
from omniroute.web.audit import Handler, Snapshots, record_answer, record_call
from omniroute.web.security import HOST_CHECK
from omniroute.web.tags import RouteTag, access_of, audited, is_management_path, tag_of

log = logging.getLogger(__name__)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app  # (a property two calls deep: read once per request)
    tag = tag_of(request, app)
    # a client route pays one flag read; an audited one comes back here through _audited
    if (tag is None or tag.audit) and audited(request, tag) and KEPT_BODY not in request:
        return await _audited(request, handler, tag)
    try:
        host_check = app[HOST_CHECK]
        if host_check is not None:
            host = request.headers.get(hdrs.HOST)
            if not host_check.allows(host):
                raise host_check.refusal(host)
        if tag is not None:  # a data-path request: tagged, so its route matched
            access = tag.access
        else:
            routing_error = request.match_info.http_exception
            if routing_error is not None:
                raise routing_error
            access = access_of(request)
        if access == "admin":
            request[PRINCIPAL] = await authenticate_admin(request)
        elif access == "client":
            request[PRINCIPAL] = await authenticate_client(request, app)
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


#: the status an audit entry carries when the client went away before the answer
CLIENT_GONE = 499


async def _audited(request: web.Request, handler: Handler,
                   tag: RouteTag | None) -> web.StreamResponse:
    """Serve a management call that changes state (or a login) and record it in the
    audit log with its final status, refusals included, and the change it made."""
    started = time.time()
    request[KEPT_BODY] = None  # the body the handler reads is kept for the entry
    snapshots = Snapshots.of(request, tag)
    try:
        response = await gateway_middleware(
            request, handler if snapshots is None else snapshots.around(handler))
    except (asyncio.CancelledError, ConnectionResetError):
        record_call(request, started, CLIENT_GONE)
        raise
    except BaseException:
        record_call(request, started, 500)
        raise
    await record_answer(request, started, response, snapshots)
    return response


def error_response(request: web.Request, err: GatewayError) -> web.Response:
    """``err`` in the error shape of the client API the route belongs to."""
    fmt = _error_format(request)
    if fmt is not None:
        try:
            body = fmt.error_body(err)
        except Exception:  # a format plugin's bug must not hide the error itself
            log.exception("format %s could not render an error", fmt.name)
        else:
            return web.Response(body=body, status=err.status,
                                content_type="application/json", headers=err.headers)
    return openai_error_response(err)


def _error_format(request: web.Request) -> Format | None:
    """The client API of the route, else of the paths it lies under; None: OpenAI's shape."""
    formats = request.app[REGISTRY].formats
    tag = tag_of(request)
    if tag is not None:
        return None if tag.format is None else formats.get(tag.format)
    path = request.path
    if is_management_path(request.app, path):
        return None
    for fmt in formats.values():
        if fmt.claims_path(path):
            return fmt
    return None


async def authenticate_client(request: web.Request,
                              app: web.Application | None = None) -> Principal:
    """The client's principal (:data:`ANONYMOUS` when keys are optional and none came).

    :param app: ``request.app``, when the caller has it already.
    """
    if app is None:
        app = request.app
    required = app[CATALOG].settings.require_api_key
    for scheme in app[AUTH_SCHEMES].values():
        if not scheme.client_api:
            continue
        try:
            principal = await scheme.authenticate(request)
        except AuthenticationFailed as refusal:
            if not required:
                return ANONYMOUS  # keys are optional: a wrong one is ignored, not refused
            principal = await _after_check(scheme, request, refusal)
        if principal is not None:
            return principal
    if required:
        raise AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            code="missing_api_key")
    return ANONYMOUS


async def authenticate_admin(request: web.Request) -> Principal:
    for scheme in request.app[AUTH_SCHEMES].values():
        try:
            principal = await scheme.authenticate(request)
        except AuthenticationFailed as refusal:
            principal = await _after_check(scheme, request, refusal)
        if principal is None:
            continue
        if not principal.is_admin:
            raise PermissionDenied("This API key has no admin scope.")
        return principal
    raise AuthenticationFailed(
        "The management API needs an admin: log in (POST /api/auth/login) "
        "or send an admin-scoped API key.", code="admin_required")


async def _after_check(scheme: AuthScheme, request: web.Request,
                       refusal: AuthenticationFailed) -> Principal | None:
    """Before ``refusal`` is final: the credential may have been created a moment ago by
    another process (``omniroute keys create``). The config watcher checks now; when the
    configuration changed, ``scheme`` authenticates once more."""
    if not await request.app[WATCHER].check():
        raise refusal
    return await scheme.authenticate(request)


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
