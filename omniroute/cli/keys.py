"""``omniroute keys``: the client API keys, in the database (no gateway needed)."""

from __future__ import annotations

import click

from omniroute.cli.common import (
    async_command,
    config_of,
    echo_json,
    open_cli_store,
)


@click.group()
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
