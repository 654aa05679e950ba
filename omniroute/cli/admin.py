"""``omniroute admin``: the management API's login."""

from __future__ import annotations

import getpass

import click

from omniroute.cli.common import (
    async_command,
    config_of,
    open_cli_store,
)


@click.group()
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
