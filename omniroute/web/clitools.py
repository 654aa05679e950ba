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

from omniroute.appkeys import AUTH_SCHEMES, CATALOG, CLI_TOOLS, REGISTRY, STORE
from omniroute.bodies import read_object
from omniroute.catalog import Catalog
from omniroute.clitools import CliTools, ConnectRequest, connect, gateway_url
from omniroute.clitools.custom import add_custom, load_custom, remove_custom
from omniroute.config import Config
from omniroute.errors import GatewayError, InvalidRequest

_SMALL_BODY = 64 * 1024


def cli_tools(app: web.Application) -> CliTools:
    """The agent CLIs of the user the gateway runs as, the plugins' after the built-in
    ones: made at the first call of one of these routes, kept for the app's life."""
    made = app[CLI_TOOLS]
    if not made:
        made.append(CliTools.for_config(app[CATALOG].config, app[REGISTRY].plugins))
    return made[0]


async def list_tools(request: web.Request) -> web.Response:
    refresh = request.query.get("refresh", "").lower() in ("1", "true", "yes")
    custom = await load_custom(request.app[STORE])
    return web.json_response(await cli_tools(request.app).listing(custom, refresh=refresh))


async def add(request: web.Request) -> web.Response:
    tools = cli_tools(request.app)
    body = await read_object(request, _SMALL_BODY)
    tool = await add_custom(request.app[STORE], body, (t.id for t in tools.known))
    return web.json_response(await tools.describe(tool), status=201)


async def remove(request: web.Request) -> web.Response:
    tool_id = request.match_info["id"]
    await remove_custom(request.app[STORE], tool_id, (t.id for t in cli_tools(request.app).known))
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
    result = await connect(cli_tools(request.app), request.app[STORE], request.match_info["id"],
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
    tools = cli_tools(request.app)
    tool = tools.find(request.match_info["id"], await load_custom(request.app[STORE]))
    return web.json_response(await tools.restore(tool, everything=everything))
