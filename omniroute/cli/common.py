"""What every ``omniroute`` command shares: the configuration, the store, errors, output."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import wraps
from typing import Any, TypeVar

import click

from omniroute.config import Config, ConfigError, load_config
from omniroute.plugins import Plugins, load_plugins

T = TypeVar("T")


class StartupError(click.ClickException):
    """A start-up input cannot be used: one line (``Error: ...``), exit status 2."""

    exit_code = 2


class StartupCommand(click.Command):
    """A command whose bad flags are reported like every other start-up input."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # click would add the usage and a hint
            raise StartupError(exc.format_message()) from None


class LazyGroup(click.Group):
    """A group whose commands in ``lazy`` (name -> ``"module:attribute"``) are imported
    the first time they are looked up, so ``omniroute serve`` does not keep every other
    command's code (and what it imports) in the gateway's memory.

    A command added the ordinary way (a plugin's, say) takes precedence over a lazy one
    of the same name; ``--help`` lists both kinds (and so imports the lazy ones).
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attribute = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


def config_of(ctx: click.Context) -> Config:
    obj = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = load_config(config_file=obj.get("config_file"),
                                        data_dir=obj.get("data_dir"))
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
    return obj["config"]


def plugins_of(config: Config) -> Plugins:
    return load_plugins(blocked=config.disabled_plugins, allowed=config.allowed_plugins)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def async_command(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run(fn(*args, **kwargs))

    return wrapper


@asynccontextmanager
async def open_cli_store(config: Config) -> AsyncIterator[Any]:
    from omniroute.startup import open_store
    from omniroute.vault import VaultError

    try:
        store = await open_store(config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        yield store
    except VaultError as exc:
        raise StartupError(f"{exc}: is OMNIROUTE_SECRET_KEY (or {config.data_dir}/secret.key) "
                           "the key they were saved with?") from None
    finally:
        await store.db.close()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
