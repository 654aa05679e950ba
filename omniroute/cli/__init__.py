"""The ``omniroute`` command line.

Configuration commands (providers, keys, admin) work on the database directly,
so they need no running gateway. A running gateway sees their changes at once
where it matters (a new key or connection is looked up again before a request
is refused) and otherwise within a second (see :mod:`omniroute.watch`).

A start-up input that cannot be used (configuration file, flags, data
directory, secret key, password, database, port) ends the command with one
line on stderr and exit status 2.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import time
from typing import Any

import click

from omniroute.cli.common import (
    LazyGroup,
    StartupCommand,
    StartupError,
    async_command,
    config_of,
    echo_json,
    open_cli_store,
    plugins_of,
)
from omniroute.config import ConfigError, load_config
from omniroute.plugins import Plugins
from omniroute.version import __version__

log = logging.getLogger(__name__)


#: the commands imported when they are run (or listed by ``--help``), not at start
LAZY_COMMANDS = {name: f"omniroute.cli.{module}:{name}_command" for name, module in (
    ("plugins", "plugins"), ("budget", "budget"), ("usage", "usage"), ("cache", "cache"),
    ("login", "login"), ("doctor", "doctor"), ("connect", "connect"))}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.version_option(__version__, prog_name="omniroute")
@click.option("--data-dir", default=None,  # checked by omniroute.startup, in one line
              help="Data directory (default $OMNIROUTE_DATA_DIR or ~/.omniroute).")
@click.option("--config", "config_file", default=None,
              help="TOML configuration file (see config/omniroute.example.toml).")
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None, config_file: str | None) -> None:
    """omniroute: one local endpoint for every LLM provider, account and wire format."""
    ctx.ensure_object(dict).update(data_dir=data_dir, config_file=config_file)


# ---------------------------------------------------------------------- serve

@cli.command(cls=StartupCommand)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 20128).")
@click.option("--workers", type=int, default=None,
              help="Worker processes sharing the port (SO_REUSEPORT).")
@click.option("--loop", type=click.Choice(["auto", "uvloop", "asyncio"]), default=None,
              help="Event loop (default auto: uvloop when installed, else asyncio).")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None,
          loop: str | None, log_level: str | None) -> None:
    """Start the gateway."""
    from omniroute import server

    obj = ctx.ensure_object(dict)
    try:
        config = load_config(config_file=obj.get("config_file"), data_dir=obj.get("data_dir"),
                             host=host, port=port, workers=workers, loop=loop,
                             log_level=log_level)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        server.serve(config)
    except (ConfigError, OSError) as exc:
        raise StartupError(str(exc)) from None


def _skips_plugins(args: list[str]) -> bool:
    """Whether ``args`` run ``plugins install`` or ``plugins uninstall``.

    Those import no plugin, so that one which crashes its importer (a bad native
    wheel, an ``exit()`` at import) can still be removed or upgraded.
    """
    takes_value = {name for param in cli.params if isinstance(param, click.Option)
                   and not param.is_flag for name in param.opts}
    words: list[str] = []
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
        elif arg in takes_value:
            value_next = True
        elif not arg.startswith("-"):
            words.append(arg)
    return words[:2] in (["plugins", "install"], ["plugins", "uninstall"])


# ---------------------------------------------------------------------- providers

@cli.group(cls=LazyGroup, lazy={"import": "omniroute.cli.login:import_command"})
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
    import time

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


# ---------------------------------------------------------------------- keys

@cli.group()
def keys() -> None:
    """Manage client API keys."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for.")
@click.option("--admin", is_flag=True, help="Allow the key to use the management API.")
@click.option("--budget", multiple=True, metavar="[PERIOD=]USD",
              help="USD budget: '50' (monthly), 'daily=5', 'weekly=20'; repeatable.")
@click.option("--tokens", multiple=True, metavar="[PERIOD=]N",
              help="Token limit per window, like --budget.")
@click.option("--models", multiple=True, metavar="PATTERNS",
              help="Allowed models, glob patterns ('openai/*'); comma-separated or repeated.")
@click.option("--expires", help="Expiry: '30d', '12h', '2026-01-31' or an ISO time (UTC).")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--concurrency", type=int, help="Requests in flight at once.")
@click.option("--no-usage-log", is_flag=True, help="Keep no usage records for this key.")
@click.pass_context
@async_command
async def keys_create(ctx: click.Context, name: str, admin: bool, budget: tuple[str, ...],
                      tokens: tuple[str, ...], models: tuple[str, ...], expires: str | None,
                      rpm: int | None, concurrency: int | None, no_usage_log: bool) -> None:
    """Create a key; it is printed once and never stored."""
    from omniroute.cli.audit import audited
    from omniroute.cli.budget import limit_options, parsed_expiry, parsed_limits

    limits = parsed_limits(limit_options(budget, tokens, models, rpm, concurrency))
    expires_at = parsed_expiry(expires)
    scopes = {"admin"} if admin else set()
    options = {"name": name, "scopes": sorted(scopes),
               "limits": limits.as_dict() if limits is not None else {},
               "expires_at": expires_at, "log_usage": not no_usage_log}
    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "POST /api/keys", "key", status=201, request=options) as change:
        key, secret = await store.create_key(name, scopes, limits=limits,
                                             expires_at=expires_at, log_usage=not no_usage_log)
        change.target = key.id
    click.echo(secret)
    click.echo(f"created {key.id} ({name}){' with admin scope' if admin else ''}; "
               "store the key now: it is not shown again", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List keys (only their first characters)."""
    async with open_cli_store(config_of(ctx)) as store:
        items = [k.public() for k in await store.list_keys()]
    if as_json:
        echo_json(items)
        return
    for k in items:
        state = "revoked" if k["revoked_at"] else "active"
        click.echo(f"{k['id']}  {k['key_prefix']}…  {state:<8} {','.join(k['scopes']) or '-':<6}"
                   f" {k['name']}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
@async_command
async def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key."""
    from omniroute.cli.audit import audited

    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "POST /api/keys/{id}/revoke", "key", key_id) as change:
        if not await store.revoke_key(key_id):
            change.status = 404
            raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")


# ---------------------------------------------------------------------- combos

@cli.group()
def combos() -> None:
    """Manage combos: several models or accounts behind one model name."""


@combos.command("add")
@click.argument("name")
@click.argument("steps", nargs=-1, required=True)
@click.option("--strategy", default="priority", show_default=True,
              help="How targets are chosen (priority, round-robin, weighted, ...).")
@click.pass_context
@async_command
async def combos_add(ctx: click.Context, name: str, steps: tuple[str, ...], strategy: str) -> None:
    """Add (or replace) combo NAME over STEPS: 'prefix/model' or a JSON step object.

    The strategy, the step fields and pinned connections are checked (errors);
    steps that do not resolve with the stored connections, aliases and combos
    are reported as warnings, since a model list only the running gateway
    fetches may still make them resolve.
    """
    from omniroute.accounts import build_combo, unresolved_steps
    from omniroute.cli.audit import audited

    parsed: list[Any] = []
    for step in steps:
        if step.lstrip().startswith("{"):
            try:
                parsed.append(json.loads(step))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"step {step!r} is not valid JSON: {exc}") from None
        else:
            parsed.append(step)
    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "POST /api/combos", "combo", name, status=201,
                    request={"name": name, "steps": parsed, "strategy": strategy}) as change:
        existing_all = await store.list_combos()
        existing = next((c for c in existing_all if c.name == name), None)
        connections = await store.list_connections()
        try:
            combo = build_combo({"name": name, "steps": parsed, "strategy": strategy},
                                existing_all, existing, connections=connections)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        others = [c for c in existing_all if existing is None or c.id != existing.id]
        router = _offline_router(connections, await store.list_aliases(), [*others, combo])
        problems = unresolved_steps(combo.steps, lambda m: router.resolve(m).targets,
                                    connections)
        if existing is not None:  # a replacement, as PUT /api/combos/{id} makes
            change.action, change.status = "PUT /api/combos/{id}", 200
        change.target = combo.id
        await store.save_combo(combo)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{'updated' if existing else 'added'} combo {combo.id}: {name} "
               f"({combo.strategy}, {len(parsed)} steps)")


def _offline_router(connections: list[Any], aliases: dict[str, str], combos: list[Any]) -> Any:
    """A router over the stored configuration alone: no provider instances are
    started and only the models a connection lists in its settings are known."""
    from omniroute.providers.base import Provider
    from omniroute.routing import Router

    providers = {c.id: Provider(c, None) for c in connections  # type: ignore[arg-type]
                 if c.active}
    models = {c.id: list(c.settings.get("models") or []) for c in connections}
    return Router(providers, aliases, combos, models)


@combos.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def combos_list(ctx: click.Context, as_json: bool) -> None:
    """List combos and their steps."""
    async with open_cli_store(config_of(ctx)) as store:
        items = [c.public() for c in await store.list_combos()]
    if as_json:
        echo_json(items)
        return
    for c in items:
        click.echo(f"{c['id']}  {c['name']}  ({c['strategy']})")
        for i, step in enumerate(c["steps"], 1):
            click.echo(f"    {i}. {step if isinstance(step, str) else json.dumps(step)}")


@combos.command("remove")
@click.argument("name_or_id")
@click.pass_context
@async_command
async def combos_remove(ctx: click.Context, name_or_id: str) -> None:
    """Remove a combo by name or id."""
    from omniroute.cli.audit import audited

    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "DELETE /api/combos/{id}", "combo", name_or_id) as change:
        found = next((c for c in await store.list_combos() if name_or_id in (c.id, c.name)), None)
        if found is None:
            change.status = 404
            raise click.ClickException(f"no combo {name_or_id!r}")
        change.target = found.id
        await store.delete_combo(found.id)
    click.echo(f"removed combo {found.name}")


# ---------------------------------------------------------------------- observing

@cli.command("requests")
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@click.option("--failed", is_flag=True, help="Only requests that failed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def requests_cmd(ctx: click.Context, limit: int, failed: bool, as_json: bool) -> None:
    """The request log: who served each request, after how many attempts, and why not."""
    where = "WHERE status >= 400 OR error IS NOT NULL" if failed else ""
    async with open_cli_store(config_of(ctx)) as store:
        rows = [dict(r) for r in await store.db.fetchall(
            f"SELECT * FROM request_log {where} ORDER BY id DESC LIMIT ?", (limit,))]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        when = time.strftime("%H:%M:%S", time.localtime(r["ts"]))
        served = f"{r['provider']}/{r['model']}" if r["provider"] else "-"
        click.echo(f"{when}  {r['status']:>3}  {r['model_requested'] or '-'} -> {served}"
                   f"  attempts {r['attempts']}  {r['latency_ms'] or 0:.0f} ms")
        if r["error"]:
            for part in str(r["error"]).split("; "):  # one failed target per line
                click.echo(f"        {part}")


@cli.command("rate-limits")
@click.option("--url", default=None, help="The running gateway (default: this config's).")
@click.option("--admin-key", envvar="OMNIROUTE_ADMIN_KEY", required=True,
              help="An admin-scoped API key (or $OMNIROUTE_ADMIN_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rate_limits_cmd(ctx: click.Context, url: str | None, admin_key: str, as_json: bool) -> None:
    """Each connection's live state in the running gateway: cooling, failures, breaker."""
    import urllib.error
    import urllib.request

    config = config_of(ctx)
    base = (url or f"http://{config.host}:{config.port}").rstrip("/")
    req = urllib.request.Request(f"{base}/api/rate-limits",
                                 headers={"Authorization": f"Bearer {admin_key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{base} answered {exc.code}: {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the gateway at {base}: {exc}") from None
    if as_json:
        echo_json(data)
        return
    health = data.get("health", {})
    click.echo(f"healthy {health.get('healthy', 0)}, degraded {health.get('degraded', 0)}, "
               f"down {health.get('down', 0)}")
    for c in data.get("connections", []):
        line = f"{c.get('status', '?'):<9} {c.get('prefix', '?') + '/':<14} {c.get('name', '')}"
        extras = [f"{k} {c[k]}" for k in ("in_flight", "consecutive_failures", "cooldown_left",
                                          "terminal_reason", "last_error") if c.get(k)]
        click.echo(line + ("  " + ", ".join(extras) if extras else ""))
        if c.get("quota"):  # a subscription: what its service last reported
            from omniroute.oauth.quota import describe

            click.echo(f"          {describe(c['quota'], time.time())}")


# ---------------------------------------------------------------------- admin

@cli.group()
def admin() -> None:
    """Administer the management API login."""


@admin.command("password")
@click.option("--password", help="The new password (default: prompt).")
@click.pass_context
@async_command
async def admin_password(ctx: click.Context, password: str | None) -> None:
    """Set the admin password."""
    from omniroute.auth.admin import set_password
    from omniroute.cli.audit import audited

    if password is None:
        password = getpass.getpass("New admin password: ")
    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "PUT /api/auth/password", request={"new_password": password}):
        try:
            await set_password(store, password)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo("admin password set")


def register_plugin_commands(group: click.Group, plugins: Plugins) -> None:
    """Let each plugin add its commands; one that raises is reported and skipped,
    so a broken plugin cannot break every command (``plugins`` included)."""
    for impl in plugins.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(*({"cli": group}[a] for a in impl.argnames))
        except Exception as exc:
            message = f"register_commands: {type(exc).__name__}: {exc}"
            info = plugins.info(impl.plugin_name)
            if info is not None and info.error is None:
                info.error = message
            log.error("plugin %s failed in %s", impl.plugin_name, message, exc_info=True)


def _add_plugin_commands() -> None:
    try:
        config = load_config()
    except ConfigError:
        return  # the command itself will report the configuration error
    register_plugin_commands(cli, plugins_of(config))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not _skips_plugins(sys.argv[1:] if argv is None else argv):
        _add_plugin_commands()
    cli.main(args=argv, prog_name="omniroute")
