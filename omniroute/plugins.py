"""Finding, loading and reporting plugins.

Every plugin, built-in or third-party, is an entry point in the ``omniroute``
group. Each loads in isolation: one that fails to import or to register is
reported with its error and skipped. Nothing happens at import time; call
:func:`load_plugins` to build a :class:`Plugins` registry.
"""

from __future__ import annotations

import importlib.metadata
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from omniroute import hookspecs

if TYPE_CHECKING:  # annotations only: nothing here needs these modules at run time
    from aiohttp import web

    from omniroute.auth.base import AuthScheme
    from omniroute.cache.base import CacheBackend
    from omniroute.cache.layer import CacheLayer
    from omniroute.clitools import CliTool
    from omniroute.formats.base import Format
    from omniroute.oauth.service import OAuthService
    from omniroute.pipeline.stages import Stage
    from omniroute.providers.base import Provider
    from omniroute.sharedstate import SharedState
    from omniroute.storage.backend import DatabaseBackend

log = logging.getLogger(__name__)

GROUP = "omniroute"

_T = TypeVar("_T")

# hook name -> the kind of thing it registers (shown by `omniroute plugins`)
_REGISTRY_HOOKS = {
    "register_providers": "providers",
    "register_cache_backends": "cache_backends",
    "register_auth_schemes": "auth_schemes",
    "register_formats": "formats",
    "register_state_backends": "state_backends",
    "register_database_backends": "database_backends",
    "register_oauth_services": "oauth_services",
}


@dataclass
class PluginInfo:
    """What one plugin is and what it did at load time."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    blocked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "registered": self.registered,
            "error": self.error,
            "blocked": self.blocked,
        }


class Plugins:
    """The loaded plugins: the pluggy manager and the types they registered."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
        self.pm = pm
        self.infos = infos
        self.providers: dict[str, type[Provider]] = {}
        self.cache_backends: dict[str, type[CacheBackend]] = {}
        self.auth_schemes: dict[str, type[AuthScheme]] = {}
        self.formats: dict[str, type[Format]] = {}
        self.state_backends: dict[str, type[SharedState]] = {}
        self.database_backends: dict[str, type[DatabaseBackend]] = {}
        #: sign-in services by name (instances: descriptions, not types)
        self.oauth_services: dict[str, OAuthService] = {}
        self._collect()

    def info(self, name: str) -> PluginInfo | None:
        return next((i for i in self.infos if i.name == name), None)

    def failure_for(self, kind: str, type_name: str) -> str:
        """Explain why a type of ``kind`` named ``type_name`` is missing."""
        broken = [i for i in self.infos if i.error or i.blocked]
        hint = "; ".join(
            f"plugin {i.name!r} {'is blocked' if i.blocked else 'failed: ' + (i.error or '')}"
            for i in broken
        )
        msg = f"no {kind.rstrip('s').replace('_', ' ')} type {type_name!r} is registered"
        return f"{msg} ({hint})" if hint else msg

    def stages(self, app: web.Application, taken: Iterable[str] = ()) -> list[Stage]:
        """The stages the plugins add (``register_stages``), in the order they run.

        Plugin by plugin in load order (built-ins first, then by entry point name),
        each plugin's in the order it registered them. A plugin whose hook raises,
        or registers something that is not a stage or whose name is taken, adds no
        stage at all; the failure is logged and the gateway serves without them.

        :param app: the started application (passed to each hook).
        :param taken: the names of the stages already in the list (the built-in ones).
        """
        from omniroute.pipeline.stages import Stage

        return self._instances("register_stages", Stage, app, taken)

    def cache_layers(self, app: web.Application) -> list[CacheLayer]:
        """The cache layers the plugins add (``register_cache_layers``), in the order they
        are asked; a plugin whose hook fails adds none (as with :meth:`stages`).

        :param app: the started application (passed to each hook).
        """
        from omniroute.cache.layer import CacheLayer

        return self._instances("register_cache_layers", CacheLayer, app, ())

    def cli_tools(self, taken: Iterable[str] = ()) -> list[CliTool]:
        """The agent CLIs the plugins add (``register_cli_tools``), in load order; a plugin
        whose hook fails, or registers an id already taken, adds none (as with :meth:`stages`).

        :param taken: the ids already known (the built-in tools').
        """
        from omniroute.clitools import CliTool

        return self._instances("register_cli_tools", CliTool, None, taken, attr="id")

    def _instances(self, hook: str, kind: type[_T], app: web.Application | None,
                   taken: Iterable[str], *, attr: str = "name") -> list[_T]:
        """The ``kind`` instances each plugin registers with ``hook(register, app)``, each
        named by its ``attr``."""
        names = set(taken)
        out: list[_T] = []
        impls = {impl.plugin_name: impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        for info in self.infos:
            impl = impls.get(info.name)
            if impl is None:
                continue
            found: list[_T] = []
            mine: set[str] = set()
            try:
                given = {"register": found.append, "app": app}
                impl.function(*(given[a] for a in impl.argnames))  # an impl may take fewer
                for item in found:
                    if not isinstance(item, kind):
                        raise TypeError(f"{item!r} is not an omniroute.{kind.__name__}")
                    name = getattr(item, attr, None)
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"{type(item).__qualname__} has no {attr!r} string")
                    if name in names or name in mine:
                        raise ValueError(f"a {kind.__name__} named {name!r} is already "
                                         "registered")
                    mine.add(name)
            except Exception:  # one broken plugin spares the rest (logged with its traceback)
                log.exception("plugin %s failed in %s; it adds nothing", info.name, hook)
                continue
            names |= mine
            out += found
        return out

    def _collect(self) -> None:
        by_kind: dict[str, dict[str, Any]] = {
            "providers": self.providers,
            "cache_backends": self.cache_backends,
            "auth_schemes": self.auth_schemes,
            "formats": self.formats,
            "state_backends": self.state_backends,
            "database_backends": self.database_backends,
            "oauth_services": self.oauth_services,
        }
        for info in self.infos:
            if self.pm.get_plugin(info.name) is None:
                continue
            staged: list[tuple[str, str, Any]] = []
            for hook_name, kind in _REGISTRY_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name != info.name:
                        continue
                    found: list[Any] = []
                    try:
                        impl.function(*({"register": found.append}[a] for a in impl.argnames))
                        staged += [(kind, _type_name(kind, cls), cls) for cls in found]
                    except Exception as exc:  # noqa: BLE001 - one broken plugin spares the rest
                        info.error = info.error or f"{hook_name}: {type(exc).__name__}: {exc}"
                        log.error("plugin %s failed in %s:\n%s", info.name, hook_name,
                                  traceback.format_exc())
            if info.error is None:
                taken: set[tuple[str, str]] = set()
                for kind, name, _ in staged:
                    if name in by_kind[kind] or (kind, name) in taken:
                        info.error = f"{kind} type {name!r} is already registered"
                        log.error("plugin %s: %s", info.name, info.error)
                        break
                    taken.add((kind, name))
            if info.error is not None:
                # Skipped as a whole: none of its types, and none of its other hooks
                # (configure_app, register_commands) run either.
                self.pm.unregister(name=info.name)
                continue
            for kind, name, cls in staged:
                by_kind[kind][name] = cls
                info.registered.setdefault(kind, []).append(name)


def _type_name(kind: str, cls: Any) -> str:
    if kind == "oauth_services":
        from omniroute.oauth.service import OAuthService

        if not isinstance(cls, OAuthService):
            raise TypeError(f"{cls!r} is not an omniroute.oauth.OAuthService")
    attr = "type" if kind == "providers" else "name"
    name = getattr(cls, attr, None)
    if not isinstance(name, str) or not name:
        what = getattr(cls, "__qualname__", type(cls).__qualname__)
        raise TypeError(f"{what} has no {attr!r} string")
    return name


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows omniroute's hookspecs (no plugins)."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    *,
    blocked: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
    extra: Iterable[tuple[str, ModuleType | object]] = (),
    entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None,
) -> Plugins:
    """Load every ``omniroute`` entry point, each in isolation, plus ``extra``.

    :param blocked: plugin names never to load (``OMNIROUTE_DISABLE_PLUGINS``).
    :param allowed: when given, load only these names (``OMNIROUTE_PLUGINS``).
    :param extra: ``(name, plugin)`` pairs registered directly (tests, embedding).
    :param entry_points: override the entry point source (tests).
    """
    pm = make_plugin_manager()
    blocked_set = set(blocked)
    allowed_set = None if allowed is None else set(allowed)
    infos: list[PluginInfo] = []
    found = entry_points() if entry_points else importlib.metadata.entry_points(group=GROUP)
    seen: set[str] = set()
    # Built-ins first so a third-party plugin cannot shadow a built-in type by load order.
    for ep in sorted(found, key=lambda e: (_dist_name(e) != "omniroute", e.name)):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        info = PluginInfo(ep.name, ep.value, _dist_name(ep), _dist_version(ep))
        infos.append(info)
        if ep.name in blocked_set or (allowed_set is not None and ep.name not in allowed_set):
            info.blocked = True
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - reported by `omniroute plugins`, and logged
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            log.error("plugin %s failed to import:\n%s", ep.name, traceback.format_exc())
            continue
        _register(pm, info, plugin)
    for name, plugin in extra:
        info = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__))
        infos.append(info)
        _register(pm, info, plugin)
    return Plugins(pm, infos)


def _register(pm: pluggy.PluginManager, info: PluginInfo, plugin: object) -> None:
    known = set(vars(pm.hook))
    unknown = [
        name for name in dir(plugin)
        if pm.parse_hookimpl_opts(plugin, name) is not None and name not in known
    ]
    if unknown:  # a misspelled hook would silently never run
        info.error = f"unknown hook(s): {', '.join(sorted(unknown))}"
        return
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:  # noqa: BLE001 - reported by `omniroute plugins`
        info.error = f"register failed: {type(exc).__name__}: {exc}"
        return
    info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _dist_version(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None
