"""``omniroute doctor [--repair]``: check the installation (see :mod:`omniroute.doctor`)."""

from __future__ import annotations

import click

from omniroute.cli.common import (
    async_command,
    config_of,
    echo_json,
    open_cli_store,
    plugins_of,
)

_MARKS = {"ok": "ok   ", "warn": "WARN ", "fail": "FAIL ", "fixed": "FIXED"}


@click.command("doctor")
@click.option("--repair", is_flag=True,
              help="Fix what is safe to fix: file permissions, OAuth client settings "
                   "overridden away from the service's defaults (backed up first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def doctor_command(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check the data directory, database, key, plugins and subscription accounts.

    Exits 1 when a check failed (after --repair, when one still fails).
    """
    from omniroute.cli.audit import audited
    from omniroute.doctor import diagnose

    config = config_of(ctx)
    findings = await diagnose(config, plugins_of(config), repair=repair)
    repaired = [f.as_dict() for f in findings if f.status == "fixed"]
    if repaired:  # a repair changed files or stored settings: on the record, when it can be
        try:
            async with open_cli_store(config) as store, \
                    audited(store, "cli doctor --repair", request={"fixed": repaired}):
                pass
        except click.ClickException as exc:  # the doctor still reports (a damaged database)
            click.echo(f"warning: the repair is not on the audit record: "
                       f"{exc.format_message()}", err=True)
    if as_json:
        echo_json([f.as_dict() for f in findings])
    else:
        for f in findings:
            click.echo(f"{_MARKS[f.status]} {f.check}: {f.detail}")
        fixed = sum(f.status == "fixed" for f in findings)
        failed = sum(f.status == "fail" for f in findings)
        warned = sum(f.status == "warn" for f in findings)
        click.echo(f"{failed} failed, {warned} warning(s), {fixed} fixed")
    if any(f.status == "fail" for f in findings):
        ctx.exit(1)
