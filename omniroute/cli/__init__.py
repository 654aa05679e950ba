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

import logging
import sys

import click

from omniroute.cli.common import LazyGroup, StartupCommand, StartupError, plugins_of
from omniroute.config import ConfigError, load_config
from omniroute.plugins import Plugins
from omniroute.version import __version__

log = logging.getLogger(__name__)


#: the commands imported when they are run (or listed by ``--help``), not at start: every
#: one but ``serve``, whose process is the gateway
LAZY_COMMANDS = {name: f"omniroute.cli.{module}:{name}_command" for name, module in (
    ("plugins", "plugins"), ("budget", "budget"), ("usage", "usage"), ("cache", "cache"),
    ("login", "login"), ("doctor", "doctor"), ("connect", "connect"))} | {
    "providers": "omniroute.cli.providers:providers", "keys": "omniroute.cli.keys:keys",
    "combos": "omniroute.cli.combos:combos", "requests": "omniroute.cli.observe:requests_cmd",
    "rate-limits": "omniroute.cli.observe:rate_limits_cmd", "admin": "omniroute.cli.admin:admin"}


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
