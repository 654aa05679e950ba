"""The audit trail of the management API: what each call is recorded as, and its read API.

The route's guard (:mod:`omniroute.web.guard`) calls :func:`record_call` after every
audited route (:func:`omniroute.web.tags.audited`: an admin route that changes state,
and the login and logout routes): who (the authenticated principal), what (method and
route pattern, the target's id, the change, redacted), when, from which address,
with which status. The entry is queued, never awaited.

The change: a route whose tag names the state it changes (``snapshot``) is served
through :class:`Snapshots`, which reads that state once after authentication, just
before the handler, and once more when the handler answered 2xx; the entry holds
what differs (:func:`omniroute.storage.audit.change_of`). Otherwise, or when the
call failed, it holds the request body. A failed read is logged and the entry
falls back to the body: the audit trail never fails a call. Client routes pay
nothing of this (they are not audited).

``GET /api/compliance/audit-log`` pages the log (admin).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from omniroute.appkeys import AUDIT_LOG, CATALOG, PRINCIPAL, STORE
from omniroute.auth.base import Principal
from omniroute.bodies import KEPT_BODY
from omniroute.errors import InvalidRequest
from omniroute.storage.audit import AuditEntry, AuditLog, change_of, diff_of
from omniroute.storage.snapshots import SNAPSHOTS, Snapshot, only_member
from omniroute.storage.store import Store
from omniroute.web.query import query_limit, query_time
from omniroute.web.tags import RouteTag, tag_route

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
                response: web.StreamResponse | None = None,
                change: tuple[str, str | None] | None = None) -> None:
    """Queue the audit entry of a finished call (redacted before it is queued).

    :param change: the stored change and the table member it changed
        (:meth:`Snapshots.change`); None: the entry holds the request body.
    """
    action = action_of(request)
    target = target_of(request, response)
    diff: str | None
    if change is not None:
        diff, member = change
        target = target if target is not None else member
    else:
        diff = None if action in BODY_NOT_KEPT else diff_of(request.get(KEPT_BODY))
    request.app[AUDIT_LOG].add(AuditEntry(
        ts=started,
        actor=actor_of(request.get(PRINCIPAL)),
        action=action,
        target=target,
        diff=diff,
        address=request.remote,
        status=status,
    ))


class Snapshots:
    """The state one audited call changes, read before its handler and after it.

    Made only for a route whose tag names a snapshot (:meth:`of`); :meth:`around`
    wraps the handler, so the first read comes after authentication (a refused
    caller costs no read).
    """

    __slots__ = ("before", "read", "snapshot", "store")

    def __init__(self, snapshot: Snapshot, store: Store) -> None:
        self.snapshot, self.store = snapshot, store
        #: the state before was read (False: not yet, or the read failed)
        self.read = False
        self.before: Any = None

    @classmethod
    def of(cls, request: web.Request, tag: RouteTag | None) -> Snapshots | None:
        if tag is None or tag.snapshot is None:
            return None
        return cls(SNAPSHOTS[tag.snapshot], request.app[STORE])

    def around(self, handler: Handler) -> Handler:
        async def snapshotted(request: web.Request) -> web.StreamResponse:
            target = target_of(request, None)  # the path's id; a creation's comes later
            if self.snapshot.readable(target):
                self.read, self.before = await self.snapshot.read(self.store, target)
            else:
                self.read = True  # nothing there yet: a creation
            return await handler(request)

        return snapshotted

    async def change(self, request: web.Request,
                     response: web.StreamResponse) -> tuple[str, str | None] | None:
        """(stored change, changed member) of a call that answered 2xx; None when the
        state before was not read or the state after cannot be."""
        if not self.read or not 200 <= response.status < 300:
            return None
        target = target_of(request, response)
        if not self.snapshot.readable(target):
            return None
        read, after = await self.snapshot.read(self.store, target)
        if not read:
            return None
        member = only_member(self.before, after) if self.snapshot.table else None
        return change_of(self.before, after, by_id=self.snapshot.by_id), member


async def record_answer(request: web.Request, started: float, response: web.StreamResponse,
                        snapshots: Snapshots | None) -> None:
    """Record a call that answered: with its change when it has a snapshot (even when
    the read after is cancelled, the entry is queued)."""
    change = None
    try:
        if snapshots is not None:
            change = await snapshots.change(request, response)
    except Exception:  # the answer is made: the entry falls back to the body, logged
        log.exception("audit: the change of %s %s could not be stored", request.method,
                      request.path)
    finally:
        record_call(request, started, response.status, response, change)


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
