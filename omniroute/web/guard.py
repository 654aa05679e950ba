"""Every route's checks, put round its handler as the router freezes, and the answer
to a request no route matched. No middleware: aiohttp calls a route's guarded handler
itself, one coroutine and no middleware chain.

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
routes pay nothing for it.

:class:`Gate` does both: a resource of the router that matches no path of its own. As
the router freezes (every route registered, plugins' included, the tags set) it wraps
each route's handler with the checks its tag needs; asked to resolve a request (only
when no route matched), it answers a 404 or 405 in the client's error shape, after the
Host check, or a CORS preflight of the client API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from functools import partial, update_wrapper
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute, MatchInfoError

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
from omniroute.web.security import CORS, HOST_CHECK, HostCheck
from omniroute.web.tags import (
    ROUTE_TAGS,
    Access,
    RouteTag,
    access_of,
    audited,
    is_management_path,
    tag_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp.web_urldispatcher import _InfoDict, _Resolve
    from yarl import URL

log = logging.getLogger(__name__)


def setup_guard(app: web.Application) -> None:
    """Register the :class:`Gate`: every route guarded, unknown ones answered."""
    app.router.register_resource(Gate(app))


class Gate(AbstractResource):
    """The router's last resource: it guards every route as the router freezes, and
    matches a request only when nothing else did (its index key is ``/``, the last the
    router looks under, and it moves to the end of that list as it freezes)."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self._app = app
        self._guarded = False

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("the gate has no URL")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the gate belongs to the main application, not a sub-application")

    def get_info(self) -> _InfoDict:
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter(())

    def freeze(self) -> None:
        if self._guarded:
            return
        self._guarded = True
        app, router = self._app, self._app.router
        tags, host_check = app.get(ROUTE_TAGS, {}), app.get(HOST_CHECK)
        for route in router.routes():
            _guard(route, tags.get(route), app, host_check)
        router.unindex_resource(self)  # last of the resources under "/"
        router.index_resource(self)

    async def resolve(self, request: web.Request) -> _Resolve:
        # no route matched: the methods the path allows are those of every resource
        # the router tried (the others, not on the path, allow none)
        allowed: set[str] = set()
        for resource in self._app.router.resources():
            if resource is not self:
                allowed |= (await resource.resolve(request))[1]
        error = (web.HTTPMethodNotAllowed(request.method, allowed) if allowed
                 else web.HTTPNotFound())
        return Unmatched(error, self.answer), set()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        """A request no route matched: a CORS preflight of the client API answered, else
        the 404 or 405 in the client's error shape (after the Host check)."""
        app, headers = self._app, request.headers
        cors, host_check = app.get(CORS), app.get(HOST_CHECK)
        if (cors is not None and request.method == "OPTIONS" and "Origin" in headers
                and "Access-Control-Request-Method" in headers):
            preflight = cors.preflight(request, host_check)
            if preflight is not None:
                return preflight
        host = headers.get(hdrs.HOST)
        if host_check is not None and not host_check.allows(host):
            return error_response(request, host_check.refusal(host))
        error = request.match_info.http_exception
        assert error is not None  # (an Unmatched's)
        return error_response(request, _from_http_exception(request, error))


class Unmatched(MatchInfoError):
    """A request no route matched (``http_exception`` says why), answered by ``answer``."""

    __slots__ = ("_answer",)

    def __init__(self, error: web.HTTPException, answer: Handler) -> None:
        super().__init__(error)
        self._answer = answer

    @property
    def handler(self) -> Handler:
        return self._answer


def _guard(route: AbstractRoute, tag: RouteTag | None, app: web.Application,
           host_check: HostCheck | None) -> None:
    """Put the checks ``tag`` asks for round ``route``'s handler."""
    handler = route.handler
    guarded: partial[Coroutine[Any, Any, web.StreamResponse]]
    if tag is None:
        guarded = partial(_untagged, handler, app, host_check)
    elif tag.audit:
        guarded = partial(_audited, handler, tag, app, host_check)
    else:  # a partial: aiohttp awaits the checks' own coroutine, no closure in between
        guarded = partial(_checked, handler, tag.access, app, host_check)
    # aiohttp has no public setter: a route's handler is fixed at its construction
    route._handler = update_wrapper(guarded, handler, updated=())


async def _checked(handler: Handler, access: Access, app: web.Application,
                   host_check: HostCheck | None, request: web.Request) -> web.StreamResponse:
    """``handler`` behind the Host check and ``access``'s authentication; errors rendered
    in the client's shape."""
    try:
        if host_check is not None:
            host = request.headers.get(hdrs.HOST)
            if not host_check.allows(host):
                raise host_check.refusal(host)
        if access == "client":
            request[PRINCIPAL] = await authenticate_client(request, app)
        elif access == "admin":
            request[PRINCIPAL] = await authenticate_admin(request)
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


async def _untagged(handler: Handler, app: web.Application, host_check: HostCheck | None,
                    request: web.Request) -> web.StreamResponse:
    """A route nobody tagged (a plugin's): classed, and maybe audited, by its path."""
    if audited(request, None):
        return await _audited(handler, None, app, host_check, request)
    return await _checked(handler, access_of(request), app, host_check, request)


#: the status an audit entry carries when the client went away before the answer
CLIENT_GONE = 499


async def _audited(handler: Handler, tag: RouteTag | None, app: web.Application,
                   host_check: HostCheck | None, request: web.Request) -> web.StreamResponse:
    """Serve a management call that changes state (or a login) and record it in the
    audit log with its final status, refusals included, and the change it made.

    :param tag: the route's (None: an untagged route, classed by its path).
    """
    started = time.time()
    request[KEPT_BODY] = None  # the body the handler reads is kept for the entry
    snapshots = Snapshots.of(request, tag)
    try:
        response = await _checked(
            handler if snapshots is None else snapshots.around(handler),
            access_of(request, tag), app, host_check, request)
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
