"""Management API of the agent CLIs on the gateway's machine (admin only).

* ``GET /api/cli-tools[?refresh=true]``: every tool, found or not, and the counts
  (``refresh`` asks the binaries for their version again);
* ``POST /api/cli-tools``: add a custom tool (``{"binary", "name"?, "id"?,
  "protocol"?, "versionArgs"?, "configPaths"?}``), 201;
* ``DELETE /api/cli-tools/{id}``: remove a custom tool;
* ``POST /api/cli-tools/{id}/configure``: ``{"model", "key"? | "new_key"?,
  "base_url"?, "small_model"?}`` rewrites the tool's own files to use the gateway
  (backed up first);
* ``POST /api/cli-tools/{id}/restore``: ``{"all"?}`` undoes the last change (or all).

The JSON shapes are in docs/cli-tools.md. The files are the tools' on the
machine the gateway runs on, as the user the gateway runs as.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from omniroute.appkeys import AUTH_SCHEMES, CATALOG, CLI_TOOLS, STORE
from omniroute.bodies import read_object
from omniroute.catalog import Catalog
from omniroute.clitools import Backups, CliTools, ConnectRequest, Places, connect, gateway_url
from omniroute.clitools.custom import as_spec, custom_tool, load_custom, save_custom, stored_specs
from omniroute.config import Config
from omniroute.errors import GatewayError, InvalidRequest, NotFound
from omniroute.plugins import Plugins
from omniroute.web.tags import tag_route

_SMALL_BODY = 64 * 1024


def build_cli_tools(config: Config, plugins: Plugins) -> CliTools:
    """The gateway's :class:`CliTools`: the tools of the user it runs as, backups in its
    data directory, the plugins' tools after the built-in ones."""
    from omniroute.clitools.builtin import BUILTIN_TOOLS

    return CliTools(Places(config.tool_env), Backups(config.data_dir / "cli-tools" / "backups"),
                    extra=plugins.cli_tools(taken=[t.id for t in BUILTIN_TOOLS]))


async def list_tools(request: web.Request) -> web.Response:
    refresh = request.query.get("refresh", "").lower() in ("1", "true", "yes")
    custom = await load_custom(request.app[STORE])
    return web.json_response(await request.app[CLI_TOOLS].listing(custom, refresh=refresh))


async def add_custom(request: web.Request) -> web.Response:
    tools = request.app[CLI_TOOLS]
    store = request.app[STORE]
    body = await read_object(request, _SMALL_BODY)
    try:
        tool = custom_tool(body)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_cli_tool") from None
    specs = await stored_specs(store)
    if any(t.id == tool.id for t in tools.known) or any(s.get("id") == tool.id for s in specs):
        raise InvalidRequest(f"A CLI tool {tool.id!r} exists already.", param="id",
                             code="duplicate_id")
    await save_custom(store, [*specs, as_spec(tool, body)])
    return web.json_response(await tools.describe(tool), status=201)


async def remove_custom(request: web.Request) -> web.Response:
    tools = request.app[CLI_TOOLS]
    store = request.app[STORE]
    tool_id = request.match_info["id"]
    if any(t.id == tool_id for t in tools.known):
        raise InvalidRequest(f"{tool_id!r} is not a custom tool; only those can be removed.",
                             code="not_custom")
    specs = await stored_specs(store)
    kept = [s for s in specs if s.get("id") != tool_id]
    if len(kept) == len(specs):
        raise NotFound(f"No custom CLI tool {tool_id!r}.", code="unknown_cli_tool")
    await save_custom(store, kept)
    return web.json_response({"deleted": tool_id})


def gateway_address(request: web.Request, config: Config) -> str:
    """Where a tool on this machine reaches this gateway: its configured address, or the
    one this request came to when the port was chosen at random (``port = 0``)."""
    if config.port:
        return gateway_url(config.host, config.port)
    return str(request.url.origin())


def model_check(catalog: Catalog) -> Any:
    def check(model: str) -> str | None:
        try:
            catalog.router.resolve(model)
        except GatewayError as exc:
            return f"the gateway does not resolve {model!r} right now: {exc.message}"
        return None

    return check


async def configure(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    body = ConnectRequest.from_body(await read_object(request, _SMALL_BODY))
    result = await connect(request.app[CLI_TOOLS], request.app[STORE], request.match_info["id"],
                           body, gateway=gateway_address(request, catalog.config),
                           require_api_key=catalog.settings.require_api_key,
                           check_model=model_check(catalog))
    if result["keyCreated"]:  # the new key works at once
        for scheme in request.app[AUTH_SCHEMES].values():
            await scheme.reload()
    return web.json_response(result)


async def restore(request: web.Request) -> web.Response:
    body: dict[str, Any] = {}
    if request.body_exists:
        body = await read_object(request, _SMALL_BODY)
    everything = body.get("all", False)
    if not isinstance(everything, bool) or set(body) - {"all"}:
        raise InvalidRequest("Send {} to undo the last change, or {\"all\": true} to undo "
                             "every change.", param="all")
    tools = request.app[CLI_TOOLS]
    tool = tools.find(request.match_info["id"], await load_custom(request.app[STORE]))
    return web.json_response(await tools.restore(tool, everything=everything))


def setup_cli_tool_routes(app: web.Application, config: Config, plugins: Plugins) -> None:
    """The CLI tools' routes (every one needs an admin) and their :class:`CliTools`."""
    app[CLI_TOOLS] = build_cli_tools(config, plugins)
    before = set(app.router.routes())
    r = app.router
    r.add_get("/api/cli-tools", list_tools)
    r.add_post("/api/cli-tools", add_custom)
    r.add_delete("/api/cli-tools/{id}", remove_custom)
    r.add_post("/api/cli-tools/{id}/configure", configure)
    r.add_post("/api/cli-tools/{id}/restore", restore)
    for route in app.router.routes():
        if route not in before:
            tag_route(app, route, None, "admin")
