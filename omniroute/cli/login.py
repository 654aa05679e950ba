"""``omniroute login SERVICE`` and ``omniroute providers import SOURCE``: subscription
accounts signed in (or copied from the official CLI) and stored encrypted.

``login`` prints the URL to open (or the device code to type), then waits, bounded by
``--timeout``, for what the service's flow brings back: the code the page shows,
pasted here (``CODE#STATE``); the browser's redirect to a listener on this machine,
or the address it was sent to, pasted (when the redirect cannot reach the listener);
or the device grant. The account is stored like any connection (``--name`` names it;
signing in again under the same name replaces its tokens). Nothing is sent to a
running gateway: it sees the new account through its configuration watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from typing import Any

import click

from omniroute.cli.common import async_command, config_of, open_cli_store, plugins_of


def parsed_settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` options as settings (a value that is JSON is taken as JSON)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--setting")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return settings


async def _read_line() -> str | None:
    """One line of standard input, read in a daemon thread (an abandoned read never
    holds the process); None at the end of input."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    stdin = sys.stdin

    def deliver(line: str) -> None:
        if not answer.done():
            answer.set_result(line)

    def read() -> None:
        try:
            line = stdin.readline()
        except (OSError, ValueError):  # closed or unreadable: as the end of input
            line = ""
        with contextlib.suppress(RuntimeError):  # the command ended (a timeout) meanwhile
            loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, name="omniroute-login-input", daemon=True).start()
    line = await answer
    return line.strip() or None


def _say(view: dict[str, Any]) -> None:
    """What the user must do, on stderr (stdout stays for the result)."""
    if view.get("instructions"):
        click.echo(view["instructions"], err=True)
    if view["flow"] == "device":
        click.echo(f"Open {view['verification_uri']} and enter the code {view['user_code']}",
                   err=True)
        if view.get("verification_uri_complete"):
            click.echo(f"(or open {view['verification_uri_complete']})", err=True)
        click.echo(f"Waiting for the sign-in (up to {view['expires_in']} s)...", err=True)
        return
    click.echo("Open this URL in a browser and sign in:", err=True)
    click.echo(view["url"], err=True)
    if view["flow"] == "loopback":
        if view.get("listening"):
            click.echo(f"Waiting for the browser to come back to {view['redirect_uri']}; if "
                       "it cannot reach this machine, paste the address it was sent to:",
                       nl=False, err=True)
        elif view.get("listen_error"):
            click.echo(f"({view['listen_error']})", err=True)
            click.echo("Paste the address the browser was sent to:", nl=False, err=True)
        else:  # the redirect goes to the service's own page (a no-browser sign-in)
            click.echo("Paste the code the page shows:", nl=False, err=True)
    else:
        click.echo("Paste the code the page shows:", nl=False, err=True)
    click.echo(" ", nl=False, err=True)


@click.command("login")
@click.argument("service")
@click.option("--name", help="The account's name (default: who signed in, else the service).")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="A connection setting, e.g. an endpoint override "
                   "(oauth_token_url=https://proxy/...); repeatable.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for the sign-in.")
@click.pass_context
@async_command
async def login_command(ctx: click.Context, service: str, name: str | None,
                        settings: tuple[str, ...], timeout: float) -> None:
    """Sign in to a subscription SERVICE (claude, ...) and store the account."""
    import aiohttp

    from omniroute.cli.audit import audited
    from omniroute.oauth import OAuthError, SignIn, TokenClient, find_service, save_account

    config = config_of(ctx)
    plugins = plugins_of(config)
    wanted = parsed_settings(settings)
    try:
        svc = find_service(plugins.oauth_services, service)
    except OAuthError as exc:
        raise click.ClickException(exc.message) from None
    async with open_cli_store(config) as store:  # signing in again: keep the account's settings
        existing = next((c for c in await store.list_connections()
                         if c.type == svc.provider_type and c.name == (name or svc.name)), None)
    chosen = {**(existing.settings if existing else {}), **wanted}
    _check(plugins, svc, name, chosen)
    async with aiohttp.ClientSession() as http:
        signin = SignIn(svc, TokenClient(http, headers=svc.headers), chosen, name=name,
                        ttl=timeout)
        started = False
        try:
            _say(await signin.start())
            started = True
            reader = None if svc.flow == "device" else _read_line
            tokens = await signin.wait(reader)
            account = await signin.account(tokens)
        except OAuthError as exc:
            if started:
                click.echo(err=True)  # end the prompt's line
            raise click.ClickException(f"{svc.name}: {exc.message}") from None
        finally:
            await signin.close()
    async with open_cli_store(config) as store, \
            audited(store, "cli login", request={"service": service, "name": name,
                                                 "settings": chosen}) as change:
        try:
            conn, created = await save_account(plugins, store, svc, account, name=name,
                                               settings=chosen)
        except OAuthError as exc:
            raise click.ClickException(exc.message) from None
        change.target, change.status = conn.id, 201 if created else 200
    click.echo(f"{'signed in' if created else 'signed in again'}: {conn.id} {conn.name} "
               f"({conn.type}) prefix {conn.prefix}/")


def _check(plugins: Any, svc: Any, name: str | None, settings: dict[str, Any]) -> None:
    """Refuse unusable settings before the user signs in, not after."""
    from omniroute.accounts import build_connection

    try:
        svc.check_settings(settings)
        build_connection(plugins, {"type": svc.provider_type, "name": name or svc.name,
                                   "credentials": {"access_token": "check"},
                                   "settings": settings})
    except ValueError as exc:
        raise click.ClickException(f"{svc.name}: {exc}") from None


@click.command("import")
@click.argument("source")
@click.option("--path", "path", type=click.Path(dir_okay=False),
              help="The credentials file (default: where the official CLI keeps it).")
@click.option("--name", help="The account's name (default: who signed in, else the service).")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="A connection setting (an endpoint override); repeatable.")
@click.pass_context
@async_command
async def import_command(ctx: click.Context, source: str, path: str | None, name: str | None,
                         settings: tuple[str, ...]) -> None:
    """Import the account an official CLI signed in (SOURCE: claude-code, ...).

    The CLI's file is only read, never changed.
    """
    import aiohttp

    from omniroute.cli.audit import audited
    from omniroute.oauth import OAuthError, TokenClient, find_import, read_import, save_account

    config = config_of(ctx)
    plugins = plugins_of(config)
    chosen = parsed_settings(settings)
    try:
        svc = find_import(plugins.oauth_services, source)
    except OAuthError as exc:
        raise click.ClickException(exc.message) from None
    _check(plugins, svc, name, chosen)
    async with aiohttp.ClientSession() as http:
        try:
            account = await read_import(svc, path, TokenClient(http, headers=svc.headers),
                                        chosen)
        except OAuthError as exc:
            raise click.ClickException(exc.message) from None
    async with open_cli_store(config) as store, \
            audited(store, "cli providers import", request={
                "source": source, "path": path, "name": name, "settings": chosen}) as change:
        try:
            conn, created = await save_account(plugins, store, svc, account, name=name,
                                               settings=chosen)
        except OAuthError as exc:
            raise click.ClickException(exc.message) from None
        change.target, change.status = conn.id, 201 if created else 200
    click.echo(f"{'imported' if created else 'imported again'}: {conn.id} {conn.name} "
               f"({conn.type}) prefix {conn.prefix}/")


__all__ = ["import_command", "login_command", "parsed_settings"]
