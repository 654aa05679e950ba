"""The audit trail of the management API: what each call is recorded as, and its read API.

The gateway middleware calls :func:`record_call` after every audited route
(:func:`omniroute.web.tags.audited`: an admin route that changes state, and the
login and logout routes): who (the authenticated principal), what (method and
route pattern, the target's id, the body as the change asked for, redacted),
when, from which address, with which status. The entry is queued, never
awaited. ``GET /api/compliance/audit-log`` pages the log (admin).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from omniroute.appkeys import AUDIT_LOG, CATALOG, PRINCIPAL, STORE
from omniroute.auth.base import Principal
from omniroute.bodies import KEPT_BODY
from omniroute.errors import InvalidRequest
from omniroute.storage.audit import AuditEntry, AuditLog, diff_of
from omniroute.web.query import query_limit, query_time
from omniroute.web.tags import tag_route

#: calls whose body is never stored: a login's holds a password (right or mistyped), and
#: anyone may send one; a sign-in's completion holds the authorization code
BODY_NOT_KEPT = frozenset({"POST /api/auth/login", "POST /api/oauth/{service}/complete"})
#: the largest answer a created object's id is read from
_CREATED_BODY_MAX = 64 * 1024


def actor_of(principal: Principal | None) -> str:
    """Who acted: ``key:<id>`` for an API key, else the principal's kind."""
    if principal is None:
        return "anonymous"
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return principal.kind


def action_of(request: web.Request) -> str:
    """``METHOD /route/{pattern}``: the same for every call of one route."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


def target_of(request: web.Request, response: web.StreamResponse | None) -> str | None:
    """The id the call acted on: from the path, else the id of what it created."""
    params = dict(request.match_info)
    if len(params) == 1:
        return next(iter(params.values()))
    if params:
        return ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    if (isinstance(response, web.Response) and response.status == 201
            and response.content_type == "application/json"
            and isinstance(response.body, bytes) and len(response.body) <= _CREATED_BODY_MAX):
        try:
            created = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(created, dict) and isinstance(created.get("id"), str | int):
            return str(created["id"])
    return None


def record_call(request: web.Request, started: float, status: int,
                response: web.StreamResponse | None = None) -> None:
    """Queue the audit entry of a finished call (redacted before it is queued)."""
    action = action_of(request)
    request.app[AUDIT_LOG].add(AuditEntry(
        ts=started,
        actor=actor_of(request.get(PRINCIPAL)),
        action=action,
        target=target_of(request, response),
        diff=None if action in BODY_NOT_KEPT else diff_of(request.get(KEPT_BODY)),
        address=request.remote,
        status=status,
    ))


async def audit_log_page(request: web.Request) -> web.Response:
    """``GET /api/compliance/audit-log``: newest first; ``actor``, ``action`` (exact, or a
    prefix ending in ``*``), ``from``, ``to``, ``limit`` and ``cursor``."""
    now = time.time()
    since, until = query_time(request, "from", now), query_time(request, "to", now)
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("'from' must be before 'to'.", param="from", code="invalid_time")
    audit = request.app[AUDIT_LOG]
    await audit.flush()  # the call just made is part of the answer (shielded: see flush)
    try:
        entries, cursor = await audit.page(
            actor=request.query.get("actor"), action=request.query.get("action"),
            since=since, until=until, cursor=request.query.get("cursor"),
            limit=query_limit(request))
    except ValueError as exc:
        raise InvalidRequest(f"'cursor': {exc}", param="cursor", code="invalid_cursor") from None
    return web.json_response({"entries": entries, "next_cursor": cursor,
                              "dropped": audit.dropped})


def setup_audit(app: web.Application) -> None:
    """The audit log's writer (started after the gateway, flushed before it closes) and
    its read API."""

    async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
        catalog = app[CATALOG]
        audit = AuditLog(app[STORE].db,
                         retention_days=lambda: catalog.settings.audit_retention_days)
        app[AUDIT_LOG] = audit
        audit.start()
        yield
        await audit.close()

    app.cleanup_ctx.append(audit_ctx)
    tag_route(app, app.router.add_get("/api/compliance/audit-log", audit_log_page), None, "admin")
