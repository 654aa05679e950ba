"""Route tags: which client API a route belongs to, and who may call it.

Every module that registers routes tags them; each route's guard
(:mod:`omniroute.web.guard`, made from its tag as the router freezes) authenticates
and renders errors by it instead of by path tables.
A route nobody tagged (a plugin's, or an unknown path) is classed by path,
failing closed: under ``/api/`` it needs an admin, unless a client API route
was registered at that very path (Ollama's ``/api/chat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from omniroute.storage.snapshots import SNAPSHOTS

Access = Literal["client", "admin", "public"]


@dataclass(frozen=True, slots=True)
class RouteTag:
    """What a route's guard needs to know of it."""

    #: the client API whose error shape its errors take (None: OpenAI's, the default)
    format: str | None
    #: ``"client"`` (follows ``require_api_key``), ``"admin"`` (management API) or
    #: ``"public"`` (no authentication)
    access: Access
    #: calls are written to the audit log (:mod:`omniroute.web.audit`): by default every
    #: admin route that changes state (``POST``, ``PUT``, ``PATCH``, ``DELETE``)
    audit: bool = False
    #: the kind of managed state an audited call changes (a name in
    #: :data:`omniroute.storage.snapshots.SNAPSHOTS`): its entry shows that state before
    #: and after; None: the entry shows the request body
    snapshot: str | None = None


#: the methods that change state: an admin route taking one is audited
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


#: the tags of the registered routes, by route
ROUTE_TAGS: web.AppKey[dict[AbstractRoute, RouteTag]] = web.AppKey("route_tags")
#: client API paths under ``/api/`` (Ollama's), which are not the management API
API_CLIENT_PATHS: web.AppKey[set[str]] = web.AppKey("api_client_paths")


def tag_route(app: web.Application, route: AbstractRoute, fmt: str | None,
              access: Access, *, audit: bool | None = None,
              snapshot: str | None = None) -> AbstractRoute:
    """Tag ``route`` with its error shape and access class; returns it.

    :param audit: write its calls to the audit log (default: when it is an admin
        route that changes state).
    :param snapshot: the kind of managed state the route changes (see
        :attr:`RouteTag.snapshot`).
    """
    if ROUTE_TAGS not in app:
        app[ROUTE_TAGS], app[API_CLIENT_PATHS] = {}, set()
    if audit is None:
        audit = access == "admin" and route.method in MUTATING_METHODS
    if snapshot is not None and snapshot not in SNAPSHOTS:
        raise ValueError(f"unknown snapshot {snapshot!r}; known: {', '.join(SNAPSHOTS)}")
    app[ROUTE_TAGS][route] = RouteTag(fmt, access, audit, snapshot)
    path = route.resource.canonical if route.resource is not None else ""
    if access == "client" and path.startswith("/api/"):
        app[API_CLIENT_PATHS].add(path)
    return route


def tag_resource(app: web.Application, resource: web.AbstractResource, fmt: str | None,
                 access: Access) -> None:
    """Tag every route of ``resource`` (e.g. a GET and its HEAD)."""
    for route in resource:
        tag_route(app, route, fmt, access)


def tag_of(request: web.Request, app: web.Application | None = None) -> RouteTag | None:
    """The matched route's tag, or None (no route matched, or nobody tagged it).

    :param app: ``request.app``, when the caller has it already.
    """
    tags = (request.app if app is None else app).get(ROUTE_TAGS)
    return None if tags is None else tags.get(request.match_info.route)


def is_management_path(app: web.Application, path: str) -> bool:
    """Whether ``path`` belongs to the management API (admin only, never CORS)."""
    return path.startswith("/api/") and path not in app.get(API_CLIENT_PATHS, ())


def access_of(request: web.Request, tag: RouteTag | None = None) -> Access:
    """Who may call the matched route: its tag's class, else by path (failing closed).

    :param tag: the route's tag, when the caller has looked it up already.
    """
    if tag is None:
        tag = tag_of(request)
    if tag is not None:
        return tag.access
    return "admin" if is_management_path(request.app, request.path) else "client"


def audited(request: web.Request, tag: RouteTag | None) -> bool:
    """Whether the call is written to the audit log: its tag says so, or it is an
    untagged (plugin) route of the management API that changes state."""
    if tag is not None:
        return tag.audit
    return (request.method in MUTATING_METHODS and request.match_info.http_exception is None
            and is_management_path(request.app, request.path))
