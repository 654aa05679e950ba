"""The routes' guards (:mod:`omniroute.web.guard`): no middleware, every route guarded
once as the router freezes, and the gate answering only what no route matched.

What the guards check (Host, CORS, authentication, audit, errors in the client's shape)
is pinned by test_security, test_auth, test_audit and test_bad_input; these tests pin
how: whatever registered a route, and whenever, it is guarded, and no route is hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from omniroute.app import make_app
from omniroute.testing import make_test_config
from omniroute.web.guard import Gate, _audited, _checked, _untagged

GUARDS = (_checked, _untagged, _audited)


async def test_no_middleware_and_every_route_guarded_once(aiohttp_client: Any,
                                                          tmp_path: Path) -> None:
    app = make_app(make_test_config(tmp_path / "data").replace(
        cors_origins=("https://app.example",)))

    async def late(request: web.Request) -> web.Response:
        return web.json_response({"late": True})

    app.router.add_get("/late", late)  # after make_app, untagged: guarded all the same
    app.router.freeze()  # frozen twice (here, then as the app starts): guarded once
    client = await aiohttp_client(app)
    assert list(app.middlewares) == []  # aiohttp calls each route's handler itself
    routes = list(app.router.routes())
    assert len(routes) > 100
    for route in routes:
        guard = route.handler
        assert getattr(guard, "func", None) in GUARDS, route
        wrapped = guard.__wrapped__  # type: ignore[union-attr]
        assert getattr(wrapped, "func", None) not in GUARDS, route
    assert (await client.get("/late")).status == 200
    assert (await client.get("/late", headers={"Host": "evil.example"})).status == 403


async def test_a_route_registered_after_the_gate_is_not_hidden(aiohttp_client: Any,
                                                               tmp_path: Path) -> None:
    """The gate matches every path; a route of the same index key ("/") registered after
    it is still tried first, and unknown paths still get the gateway's 404."""
    app = make_app(make_test_config(tmp_path / "data"))

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"page": request.match_info["page"]})

    app.router.add_get("/{page}", page)
    client = await aiohttp_client(app)
    resp = await client.get("/hello")
    assert resp.status == 200 and await resp.json() == {"page": "hello"}
    resp = await client.get("/no/such/route")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.post("/hello")
    assert resp.status == 405 and set(resp.headers["Allow"].split(",")) >= {"GET"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_the_gate_has_no_routes_of_its_own(tmp_path: Path) -> None:
    app = make_app(make_test_config(tmp_path / "data"))
    gates = [r for r in app.router.resources() if isinstance(r, Gate)]
    assert len(gates) == 1
    gate = gates[0]
    assert len(gate) == 0 and list(gate) == [] and not gate.raw_match("/")
    assert gate.canonical == "/" and gate.get_info() == {}
