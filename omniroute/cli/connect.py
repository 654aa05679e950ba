"""``omniroute connect``: point an agent CLI on this machine at omniroute, list them, undo.

It works on the files directly (no running gateway needed), through the same
code as ``/api/cli-tools`` (:mod:`omniroute.clitools`)::

    omniroute connect --list
    omniroute connect claude-code --model openai/gpt-4.1 --new-key
    omniroute connect codex --model coder --key-env OMNIROUTE_KEY
    omniroute connect claude-code --undo
    omniroute connect --add mytool --name "My tool" --protocol openai
    omniroute connect --remove mytool
"""

from __future__ import annotations

import os
from typing import Any

import click

from omniroute.cli.common import async_command, config_of, echo_json, open_cli_store, plugins_of
from omniroute.clitools import CliTools, ConnectRequest, connect, gateway_url, load_custom
from omniroute.clitools.custom import add_custom, remove_custom
from omniroute.clitools.tool import PROTOCOLS
from omniroute.config import Config, Settings
from omniroute.errors import GatewayError


@click.command("connect")
@click.argument("tool_id", required=False)
@click.option("--model", help="The model the tool asks for (a model, alias or combo).")
@click.option("--small-model", help="A smaller model for the tool's background work.")
@click.option("--key", help="An omniroute API key to write (prefer --key-env or --new-key).")
@click.option("--key-env", metavar="VAR", help="Read the API key from this variable.")
@click.option("--new-key", is_flag=True, help="Create an API key for this tool.")
@click.option("--base-url", help="The gateway's URL (default: this configuration's).")
@click.option("--undo", is_flag=True, help="Undo omniroute's last change to the tool's files.")
@click.option("--all", "undo_all", is_flag=True, help="With --undo: undo every change.")
@click.option("--list", "list_tools", is_flag=True, help="List the tools and what was found.")
@click.option("--add", "add_binary", metavar="BINARY", help="Add a custom tool run as BINARY.")
@click.option("--name", help="With --add: its name.")
@click.option("--id", "custom_id", help="With --add: its id (default: the binary).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="openai", show_default=True,
              help="With --add: the API it speaks.")
@click.option("--config-path", multiple=True, help="With --add: a file that shows it is set "
              "up ('~/' is the home; repeatable).")
@click.option("--remove", "remove_id", metavar="ID", help="Remove the custom tool ID.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def connect_command(ctx: click.Context, tool_id: str | None, model: str | None,
                          small_model: str | None, key: str | None, key_env: str | None,
                          new_key: bool, base_url: str | None, undo: bool, undo_all: bool,
                          list_tools: bool, add_binary: str | None, name: str | None,
                          custom_id: str | None, protocol: str, config_path: tuple[str, ...],
                          remove_id: str | None, as_json: bool) -> None:
    """Point agent CLIs (Claude Code, Codex, Gemini CLI, ...) at omniroute.

    TOOL_ID's own configuration is rewritten to use this gateway with an API key
    and --model; the files are backed up first, and --undo puts them back.
    """
    from omniroute.cli.audit import audited

    modes = [bool(tool_id and not undo), undo, list_tools, bool(add_binary), bool(remove_id)]
    if sum(modes) != 1:
        raise click.UsageError("give a TOOL_ID (with --model, or --undo), or one of --list, "
                               "--add, --remove")
    config = config_of(ctx)
    tools = CliTools.for_config(config, plugins_of(config))
    async with open_cli_store(config) as store:
        if list_tools:
            _show_listing(await tools.listing(await load_custom(store)), as_json)
            return
        # the entry the matching /api/cli-tools route leaves (the key masked, as a body's)
        spec = {"binary": add_binary, "name": name, "id": custom_id, "protocol": protocol,
                "configPaths": list(config_path)}
        action: str
        target: str | None
        options: dict[str, Any] | None
        if add_binary:
            action, target, options = "POST /api/cli-tools", custom_id or add_binary, spec
        elif remove_id:
            action, target, options = "DELETE /api/cli-tools/{id}", remove_id, None
        elif undo:
            action, target, options = ("POST /api/cli-tools/{id}/restore", tool_id,
                                       {"all": undo_all})
        else:
            action, target = "POST /api/cli-tools/{id}/configure", tool_id
            options = {"model": model, "small_model": small_model, "key": key,
                       "key_env": key_env, "new_key": new_key, "base_url": base_url}
        async with audited(store, action, target=target, request=options):
            try:
                if add_binary:
                    await _add(tools, store, spec, as_json)
                elif remove_id:
                    await _remove(tools, store, remove_id)
                elif undo:
                    tool = tools.find(str(tool_id), await load_custom(store))
                    _show_restore(await tools.restore(tool, everything=undo_all), as_json)
                else:
                    result = await _configure(config, tools, store, str(tool_id), model,
                                              small_model, _key(key, key_env), new_key,
                                              base_url)
                    _show_configure(result, as_json)
            except GatewayError as exc:
                raise click.ClickException(exc.message) from None


def _key(key: str | None, key_env: str | None) -> str | None:
    if key_env is None:
        return key
    if key is not None:
        raise click.UsageError("give --key or --key-env, not both")
    value = os.environ.get(key_env)
    if not value:
        raise click.ClickException(f"${key_env} is empty")
    return value


async def _configure(config: Config, tools: CliTools, store: Any, tool_id: str,
                     model: str | None, small_model: str | None, key: str | None,
                     new_key: bool, base_url: str | None) -> dict[str, Any]:
    body = {"model": model, "small_model": small_model, "key": key, "base_url": base_url,
            "new_key": new_key or None}
    request = ConnectRequest.from_body({k: v for k, v in body.items() if v is not None})
    stored = await store.get_settings()
    required = config.settings_env.get("require_api_key", stored.get(
        "require_api_key", config.settings_defaults.get("require_api_key",
                                                        Settings.require_api_key)))
    return await connect(tools, store, tool_id, request,
                         gateway=gateway_url(config.host, config.port),
                         require_api_key=Settings.coerce("require_api_key", required),
                         check_model=await _offline_check(store))


async def _offline_check(store: Any) -> Any:
    """Whether the stored configuration resolves a model: without a running gateway only
    the models the connections list are known, so a miss is a warning."""
    from omniroute.cli.combos import _offline_router

    router = _offline_router(await store.list_connections(), await store.list_aliases(),
                             await store.list_combos())

    def check(model: str) -> str | None:
        try:
            router.resolve(model)
        except GatewayError as exc:
            return (f"the stored configuration does not resolve {model!r} ({exc.message}); "
                    "a model list the running gateway fetches may")
        return None

    return check


async def _add(tools: CliTools, store: Any, spec: dict[str, Any], as_json: bool) -> None:
    spec = {k: v for k, v in spec.items() if v not in (None, [])}
    tool = await add_custom(store, spec, (t.id for t in tools.known))
    row = await tools.describe(tool)
    if as_json:
        echo_json(row)
        return
    state = f"found at {row['path']}" if row["installed"] else "not found on PATH"
    click.echo(f"added custom tool {tool.id} ({tool.name}): {state}")


async def _remove(tools: CliTools, store: Any, tool_id: str) -> None:
    await remove_custom(store, tool_id, (t.id for t in tools.known))
    click.echo(f"removed custom tool {tool_id}")


def _show_listing(listing: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(listing)
        return
    for row in listing["tools"]:
        state = "installed" if row["installed"] else "not found"
        extra = [row["path"] or (", ".join(row["configFound"]) or "")]
        if row["configured"]:
            extra.append("configured by omniroute")
        if row["isCustom"]:
            extra.append("custom")
        click.echo(f"{row['id']:<13} {row['name']:<13} {state:<10} {row['version'] or '-':<12} "
                   f"{row['protocol']:<10} {'  '.join(e for e in extra if e)}".rstrip())
    s = listing["summary"]
    click.echo(f"{s['total']} tools: {s['installed']} installed, {s['notFound']} not found "
               f"({s['builtIn']} built-in, {s['custom']} custom)")


def _show_configure(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(result)
        return
    if not result["changed"]:
        click.echo(f"{result['id']}: already configured for {result['model']} at "
                   f"{result['baseUrl']}; nothing changed")
    else:
        click.echo(f"{result['id']}: configured for {result['model']} at {result['baseUrl']}")
        for path in result["files"]:
            click.echo(f"  wrote {path}")
        click.echo(f"  backup {result['backup']} (undo: omniroute connect {result['id']} --undo)")
    if result["key"]:
        click.echo(f"  key {result['key']}" + (f" ({result['keyId']})" if result["keyId"] else ""))
    for note in result["notes"]:
        click.echo(f"  note: {note}", err=True)


def _show_restore(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(result)
        return
    for undone in result["restored"]:
        for f in undone["files"]:
            click.echo(f"{f['action']} {f['path']}")
            if f["keptAt"]:
                click.echo(f"  it had changed since omniroute wrote it: that version is kept "
                           f"at {f['keptAt']}", err=True)
    click.echo(f"{result['id']}: {len(result['restored'])} change(s) undone, "
               f"{result['remaining']} left")
