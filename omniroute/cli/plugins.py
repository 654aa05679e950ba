"""``omniroute plugins``: list them, and install or uninstall them with pip."""

from __future__ import annotations

import subprocess
import sys

import click

from omniroute.cli.common import config_of, echo_json, plugins_of


@click.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List plugins: version, what each registered, and load errors.

    `omniroute plugins install NAME` and `omniroute plugins uninstall NAME` add and
    remove them with pip.
    """
    if ctx.invoked_subcommand is not None:
        return
    plugins = plugins_of(config_of(ctx))
    infos = [i.as_dict() for i in plugins.infos]
    if as_json:
        echo_json(infos)
        return
    for info in infos:
        state = "blocked" if info["blocked"] else ("ERROR" if info["error"] else "ok")
        dist = f"{info['distribution']} {info['version']}" if info["distribution"] else "-"
        click.echo(f"{info['name']:<24} {state:<8} {dist}")
        for kind, names in info["registered"].items():
            click.echo(f"    {kind}: {', '.join(names)}")
        if info["error"]:
            click.echo(f"    error: {info['error']}")


@plugins_command.command("install")
@click.argument("packages", nargs=-1)
@click.option("-e", "--editable", "editable", multiple=True, metavar="PATH",
              help="Install the project in PATH in editable mode (repeatable).")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade to the newest versions.")
@click.option("--force-reinstall", is_flag=True, help="Reinstall even when up to date.")
@click.pass_context
def plugins_install(ctx: click.Context, packages: tuple[str, ...], editable: tuple[str, ...],
                    upgrade: bool, force_reinstall: bool) -> None:
    """Install plugins with pip, into omniroute's own environment.

    PACKAGES are what pip takes: distribution names (omniroute-x), paths or URLs.
    The plugins are listed afterwards.
    """
    if not packages and not editable:
        raise click.UsageError("name at least one package, path or URL (or -e PATH)")
    args = ["install", *packages, *(arg for path in editable for arg in ("-e", path))]
    args += ["--upgrade"] * upgrade + ["--force-reinstall"] * force_reinstall
    _pip(args)
    _list_installed(ctx)


@plugins_command.command("uninstall")
@click.argument("packages", nargs=-1, required=True)
@click.pass_context
def plugins_uninstall(ctx: click.Context, packages: tuple[str, ...]) -> None:
    """Uninstall plugins (distribution names) with pip, from omniroute's own environment.

    No plugin is imported first, so a plugin too broken to import can still be
    removed. The remaining plugins are listed afterwards.
    """
    _pip(["uninstall", "-y", *packages])
    _list_installed(ctx)


def _pip(args: list[str]) -> None:
    """Run pip in the gateway's own environment, its output going to the terminal.

    Not timed: the user watches pip's progress, and pip bounds its own network waits.
    """
    done = subprocess.run([sys.executable, "-m", "pip", *args], check=False)
    if done.returncode != 0:
        raise click.ClickException(f"pip {args[0]} failed (exit code {done.returncode})")


def _list_installed(ctx: click.Context) -> None:
    """``omniroute plugins``, in a fresh process.

    Only a new interpreter sees what pip just installed (an editable install's
    path file is read at start-up), and a plugin that breaks on import breaks
    that process, not this one.
    """
    obj = ctx.find_root().ensure_object(dict)
    options: list[str] = []
    if obj.get("data_dir"):
        options += ["--data-dir", obj["data_dir"]]
    if obj.get("config_file"):
        options += ["--config", obj["config_file"]]
    click.echo("")
    try:
        listing = subprocess.run([sys.executable, "-m", "omniroute", *options, "plugins"],
                                 check=False, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise click.ClickException("`omniroute plugins` did not finish within 120 s") from None
    if listing.returncode != 0:
        raise click.ClickException(
            "pip succeeded, but `omniroute plugins` failed: a plugin may be broken "
            "(`omniroute plugins uninstall NAME` removes it)")
