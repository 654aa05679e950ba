"""``omniroute providers``: the upstream connections, in the database (no gateway needed)."""

from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Any

import click

from omniroute.cli.common import (
    LazyGroup,
    async_command,
    config_of,
    echo_json,
    open_cli_store,
    plugins_of,
)


@click.group(cls=LazyGroup, lazy={"import": "omniroute.cli.login:import_command"})
def providers() -> None:
    """Manage provider connections (upstream accounts)."""


@providers.command("presets")
@click.pass_context
def providers_presets(ctx: click.Context) -> None:
    """List provider types and their presets."""
    for cls in plugins_of(config_of(ctx)).providers.values():
        click.echo(f"{cls.type} ({cls.format}): {cls.description}")
        for p in cls.presets.values():
            key = "" if p.needs_api_key else " (no key needed)"
            click.echo(f"    {p.name:<12} {p.prefix + '/':<12} {p.base_url}{key}")


@providers.command("add")
@click.option("--preset", help="A named preset (see `omniroute providers presets`).")
@click.option("--type", "type_", help="Provider type, for a custom base URL.")
@click.option("--name", help="Display name.")
@click.option("--prefix", help="Model prefix (default: the preset's).")
@click.option("--base-url", help="Base URL of an OpenAI-compatible API.")
@click.option("--api-key", help="API key (prefer --api-key-env or the prompt).")
@click.option("--api-key-env", help="Read the API key from this environment variable.")
@click.option("--no-key", is_flag=True, help="The endpoint needs no API key.")
@click.option("--model", "models", multiple=True, help="A model name to list (repeatable).")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--inactive", is_flag=True, help="Add it switched off.")
@click.pass_context
@async_command
async def providers_add(ctx: click.Context, preset: str | None, type_: str | None,
                        name: str | None, prefix: str | None, base_url: str | None,
                        api_key: str | None, api_key_env: str | None, no_key: bool,
                        models: tuple[str, ...], priority: int, inactive: bool) -> None:
    """Add a provider connection."""
    from omniroute.accounts import build_connection
    from omniroute.cli.audit import audited

    config = config_of(ctx)
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.ClickException(f"${api_key_env} is empty")
    plugins = plugins_of(config)
    if api_key is None and not no_key and sys.stdin.isatty() and _wants_key(plugins, type_, preset):
        api_key = getpass.getpass("API key (empty for none): ") or None
    spec: dict[str, Any] = {"priority": priority, "active": not inactive}
    for key, value in (("preset", preset), ("type", type_), ("name", name), ("prefix", prefix),
                       ("base_url", base_url), ("api_key", api_key)):
        if value is not None:
            spec[key] = value
    if models:
        spec["models"] = list(models)
    try:
        conn = build_connection(plugins, spec)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    async with open_cli_store(config) as store, \
            audited(store, "POST /api/providers", "connection", status=201,
                    request=spec) as change:
        change.target = conn.id
        await store.save_connection(conn)
    click.echo(f"added {conn.id}: {conn.name} ({conn.type}) prefix {conn.prefix}/")


def _wants_key(plugins: Any, type_: str | None, preset: str | None) -> bool:
    """Whether to prompt for an API key: the type takes one and the preset needs one."""
    types = list(plugins.providers.values())
    if type_ is not None:
        types = [t for t in types if t.type == type_]
    elif preset is not None:
        types = [t for t in types if preset in t.presets]
    if not types:
        return False  # build_connection explains what is wrong
    cls = types[0]
    if "api_key" not in cls.credential_fields:
        return False
    found = cls.presets.get(preset) if preset else None
    return found.needs_api_key if found is not None else True


@providers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def providers_list(ctx: click.Context, as_json: bool) -> None:
    """List provider connections (credentials masked; a subscription's token state)."""
    from omniroute.oauth.accounts import account_state

    config = config_of(ctx)
    providers = plugins_of(config).providers
    async with open_cli_store(config) as store:
        stored = await store.list_connections()
    conns = []
    for conn in stored:
        view = conn.public()
        cls = providers.get(conn.type)
        if cls is not None and cls.auth_kind == "oauth":
            view["oauth"] = account_state(conn.credentials)
        conns.append(view)
    if as_json:
        echo_json(conns)
        return
    for c in conns:
        state = "active" if c["active"] else "inactive"
        url = c["settings"].get("base_url", "")
        oauth = c.get("oauth")
        if oauth is not None:  # a subscription: say when it needs the operator
            url = _oauth_line(oauth) + (f"  {url}" if url else "")
        click.echo(f"{c['id']}  {c['prefix'] + '/':<14} {c['type']:<8} {state:<8} "
                   f"{c['name']}  {url}")


def _oauth_line(oauth: dict[str, Any]) -> str:
    """A subscription account's state in a few words (``providers list``)."""
    if oauth["status"] == "needs_sign_in":
        return f"NEEDS SIGN-IN ({oauth.get('reason', '')})"
    left = oauth.get("expires_in")
    if left is None:
        return "token expiry unknown"
    if left <= 0:
        return "token expired (renewed on next use)"
    hours, minutes = divmod(int(left) // 60, 60)
    return f"token valid {hours}h{minutes:02d}m"


@providers.command("remove")
@click.argument("conn_id")
@click.pass_context
@async_command
async def providers_remove(ctx: click.Context, conn_id: str) -> None:
    """Remove a provider connection."""
    from omniroute.cli.audit import audited

    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "DELETE /api/providers/{id}", "connection", conn_id) as change:
        if not await store.delete_connection(conn_id):
            change.status = 404
            raise click.ClickException(f"no connection {conn_id!r}")
    click.echo(f"removed {conn_id}")


@providers.command("test")
@click.argument("conn_id")
@click.pass_context
@async_command
async def providers_test(ctx: click.Context, conn_id: str) -> None:
    """Check that a connection answers (lists its models)."""

    import aiohttp

    from omniroute.config import Settings
    from omniroute.credentials import Refresher, StoredCredentials
    from omniroute.errors import GatewayError
    from omniroute.providers.base import ProviderContext, Timeouts

    config = config_of(ctx)
    plugins = plugins_of(config)
    async with open_cli_store(config) as store, aiohttp.ClientSession() as http:
        conn = await store.get_connection(conn_id)
        if conn is None:
            raise click.ClickException(f"no connection {conn_id!r}")
        cls = plugins.providers.get(conn.type)
        if cls is None:
            raise click.ClickException(plugins.failure_for("providers", conn.type))
        # renewed tokens (a subscription's) are kept: a rotated refresh token must not be lost
        kept = StoredCredentials(store)
        provider = cls(conn, ProviderContext(http, Timeouts.from_settings(Settings()),
                                             credentials=kept, refresher=Refresher(kept)))
        started = time.perf_counter()
        try:
            models = await provider.list_models()
            await provider.test()
        except GatewayError as exc:
            raise click.ClickException(f"{conn.name}: failed: {exc.message}") from None
        finally:
            await provider.close()
    ms = (time.perf_counter() - started) * 1000
    click.echo(f"{conn.name}: ok in {ms:.0f} ms, {len(models)} models")
