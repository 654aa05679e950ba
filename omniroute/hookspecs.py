"""The plugin contract: every hook omniroute calls, all of them at start-up.

Hooks describe the shape of the gateway; the objects they register do the work.
pluggy is synchronous, so no hook runs on the per-request path: per request the
core calls the registered objects' own (async) methods directly.

Each hook is documented in docs/plugins.md and tested by ``test_hook_<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from omniroute.auth.base import AuthScheme
    from omniroute.cache.base import CacheBackend
    from omniroute.cache.layer import CacheLayer
    from omniroute.clitools import CliTool
    from omniroute.config import Config
    from omniroute.formats.base import Format
    from omniroute.oauth.service import OAuthService
    from omniroute.pipeline.stages import Stage
    from omniroute.providers.base import Provider
    from omniroute.sharedstate import SharedState
    from omniroute.storage.backend import DatabaseBackend

hookspec = pluggy.HookspecMarker("omniroute")
hookimpl = pluggy.HookimplMarker("omniroute")


@hookspec
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    """Register provider types (classes that call an upstream LLM API).

    :param register: call it once per :class:`omniroute.Provider` subclass; the
        class's ``type`` names it, connections of that type create instances.
    """


@hookspec
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    """Register subscription sign-in services (how an account of a provider type signs in).

    :param register: call it once per :class:`omniroute.oauth.OAuthService` (a frozen
        description: client id, endpoints, scopes, flow); its ``name`` is what
        ``omniroute login NAME`` and ``/api/oauth/NAME/...`` take, its
        ``provider_type`` the connection type a signed-in account becomes.
    """


@hookspec
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    """Register cache backend types (where cached responses are kept).

    :param register: call it once per :class:`omniroute.CacheBackend` subclass;
        the class's ``name`` is what the configuration selects.
    """


@hookspec
def register_auth_schemes(register: Callable[[type[AuthScheme]], None]) -> None:
    """Register auth scheme types (ways a request proves who sent it).

    :param register: call it once per :class:`omniroute.AuthScheme` subclass;
        the gateway creates one instance of each at start-up.
    """


@hookspec
def register_state_backends(register: Callable[[type[SharedState]], None]) -> None:
    """Register shared-state backend types (where instances behind one load balancer keep
    the state they share: limits, cooldowns, breakers, budgets, config-change notices).

    :param register: call it once per :class:`omniroute.SharedState` subclass; its
        ``schemes`` say which ``state_url`` it serves (``redis``), and only a configured
        ``state_url`` creates an instance.
    """


@hookspec
def register_database_backends(register: Callable[[type[DatabaseBackend]], None]) -> None:
    """Register database backend types (where instances keep one configuration and one
    usage table: connections, keys, aliases, combos, settings, the request log).

    :param register: call it once per :class:`omniroute.DatabaseBackend` subclass; its
        ``schemes`` say which ``database_url`` it serves (``postgresql``), and only a
        configured ``database_url`` opens one; without it the SQLite file is used.
    """


@hookspec
def register_formats(register: Callable[[type[Format]], None]) -> None:
    """Register wire formats (how one API's requests, answers and streams look).

    :param register: call it once per :class:`omniroute.Format` subclass; the
        class's ``name`` is what provider types name in ``Provider.format`` and
        what client endpoints decode and encode with.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``omniroute`` command line.

    :param cli: the top-level click group; add commands or sub-groups to it.
    """


@hookspec
def configure_app(app: web.Application, config: Config) -> None:
    """Shape the aiohttp application once, before it starts serving.

    Add routes, ``cleanup_ctx`` resources or startup callbacks here.

    :param app: the gateway application, fully built but not yet started.
    :param config: the gateway's start-up configuration.
    """


@hookspec
def register_stages(register: Callable[[Stage], None], app: web.Application) -> None:
    """Add stages that every client request passes (metrics, tracing, policies).

    Called once per gateway, when it starts: the database is open and the app's
    collaborators are under the keys of :mod:`omniroute.appkeys`. Stages run after
    the built-in ones (:func:`omniroute.pipeline.default_stages`), plugin by plugin
    in load order (built-in plugins first, then by entry point name), each plugin's
    in the order it registered them.

    :param register: call it once per :class:`omniroute.Stage` instance; its
        ``name`` must not be taken by another stage.
    :param app: the gateway application, started (resources open) but not yet serving.
    """


@hookspec
def register_cache_layers(register: Callable[[CacheLayer], None], app: web.Application) -> None:
    """Add cache layers the exact response cache asks after its backends missed (semantic).

    Called once per gateway, when it starts (like ``register_stages``). Layers are
    asked in registration order (plugin by plugin in load order) with the request's
    :class:`omniroute.cache.CacheKey`; the first hit answers. Every cacheable answer
    is stored in each layer, off the response path.

    :param register: call it once per :class:`omniroute.cache.CacheLayer` instance;
        its ``name`` must not be taken by another layer.
    :param app: the gateway application, started (resources open) but not yet serving.
    """


@hookspec
def register_cli_tools(register: Callable[[CliTool], None]) -> None:
    """Add agent CLIs that ``omniroute connect`` and ``/api/cli-tools`` find and configure.

    Called when the gateway is made and when a ``connect`` command runs. The tools
    come after the built-in ones, plugin by plugin in load order.

    :param register: call it once per :class:`omniroute.clitools.CliTool` instance; its
        ``id`` must not be taken by a built-in tool or another plugin's.
    """
