"""A working plugin: one provider type, one cache backend and one command."""

from __future__ import annotations

from collections.abc import Callable

import click

from omniroute import CacheBackend, Provider, hookimpl


class SampleProvider(Provider):
    type = "sample"
    description = "test provider from plugin_samples.good"
    requires_credentials = False


class SampleCache(CacheBackend):
    name = "sample-cache"


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(SampleProvider)


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(SampleCache)


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command("sample-hello")
    def sample_hello() -> None:
        click.echo("hello from sample")
