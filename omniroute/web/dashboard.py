"""The web dashboard: a page and its assets, served by the gateway itself at ``/dashboard``.

Everything ships inside the package (``omniroute/dashboard/``: HTML, CSS and
hand-written ES modules, no build step), so the dashboard works offline and never
asks another host for anything; the Content-Security-Policy it is served with
forbids that too. The page holds no data: it signs in with the admin session
(``/api/auth/...``) and reads and changes everything through the management API,
whose rules (an admin, a CSRF token for a change) apply to it as to anyone.

``GET /dashboard`` and ``GET /dashboard/<page>`` answer the page; the browser
decides which view to show from the path. ``GET /dashboard/assets/<file>`` answers
an asset, read from the package once and kept in memory, with an ``ETag``
(revalidated on each load: a new release is picked up at once). A browser asking
for ``/`` (``Accept: text/html``) is sent to ``/dashboard`` (:func:`wants_page`,
called by the client API's ``/`` route). Nothing here runs on the client API's path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from omniroute.errors import NotFound
from omniroute.web.tags import tag_resource

#: the package's dashboard directory: index.html, assets/...
ROOT = Path(__file__).resolve().parent.parent / "dashboard"
PREFIX = "/dashboard"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
#: what the page may load and where it may connect: this origin only
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\.[a-z0-9]+$")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class Assets:
    """The dashboard's files, read from ``root`` on first use and kept in memory."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._files: dict[str, Asset] | None = None

    def _load(self) -> dict[str, Asset]:
        files: dict[str, Asset] = {}
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.suffix not in CONTENT_TYPES:
                continue
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[path.relative_to(self.root).as_posix()] = Asset(
                body, CONTENT_TYPES[path.suffix], etag)
        return files

    def get(self, name: str) -> Asset | None:
        """The file ``name`` (a path under the root), or None."""
        if self._files is None:
            self._files = self._load()
        if not _SAFE_PATH.match(name):
            return None
        return self._files.get(name)

    def names(self) -> list[str]:
        if self._files is None:
            self._files = self._load()
        return sorted(self._files)


ASSETS = web.AppKey("dashboard_assets", Assets)


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def page(request: web.Request) -> web.Response:
    """The dashboard's page, for ``/dashboard`` and every view under it."""
    asset = request.app[ASSETS].get("index.html")
    if asset is None:
        raise NotFound("The dashboard's files are missing from this installation.",
                       code="dashboard_missing")
    return _answer(request, asset)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = request.app[ASSETS].get(f"assets/{name}")
    if found is None:
        raise NotFound(f"No dashboard asset {name!r}.")
    return _answer(request, found)


def wants_page(request: web.Request) -> bool:
    """Whether a request for ``/`` comes from a browser that wants a page."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


def redirect_to_dashboard() -> web.Response:
    return web.Response(status=302, headers={"Location": PREFIX, "Cache-Control": "no-store"})


def setup_dashboard(app: web.Application, assets: Assets | None = None) -> None:
    """Serve the dashboard at ``/dashboard`` (public routes: the page holds no data)."""
    app[ASSETS] = assets or Assets()
    r = app.router
    for resource in (r.add_get(PREFIX, page).resource, r.add_get(PREFIX + "/", page).resource,
                     r.add_get(PREFIX + "/assets/{name:.+}", asset).resource,
                     r.add_get(PREFIX + "/{view:[a-z-]+}", page).resource):
        assert resource is not None
        tag_resource(app, resource, None, "public")
