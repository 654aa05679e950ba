"""Model resolution: from the model name a client sent to the targets to try.

Order: a combo name; ``prefix/model`` (the first ``/`` splits, the rest may
hold more slashes); a user alias (exact, then wildcard); a bare model name
that exactly one provider prefix offers (several: 400 listing them). A combo
step may pin one ``connection`` (id or name) and carry a ``weight``. The
:class:`Router` is rebuilt from the configuration on every reload, so resolving
is a few dict lookups.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from omniroute.errors import InvalidRequest, ModelNotFound
from omniroute.providers.base import Provider
from omniroute.storage.store import Combo, Connection

MAX_DEPTH = 4
#: model names whose routes a router keeps (past it they are all forgotten: a client
#: that varies the name only costs the lookups it would have cost anyway)
ROUTES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can go: a connection and the model name it knows."""

    connection: Connection
    provider: Provider
    model: str
    #: the combo step this target came from (accounts of one step form a group)
    group: int = 0
    #: relative weight for the ``weighted`` strategy (from the combo step)
    weight: float = 1.0
    #: the connection's prefix, and ``prefix/model (connection name)`` for logs, errors
    #: and the attempt log: read by every request, so set once, when the route is built
    prefix: str = field(init=False, compare=False, repr=False)
    label: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        conn = self.connection
        object.__setattr__(self, "prefix", conn.prefix)
        object.__setattr__(self, "label", f"{conn.prefix}/{self.model} ({conn.name})")


@dataclass(frozen=True, slots=True)
class Route:
    requested: str
    targets: tuple[Target, ...]
    combo: str | None = None
    #: the combo's strategy (None: the account strategy setting applies)
    strategy: str | None = None


class Router:
    """Resolves model names against one snapshot of the configuration."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        aliases: Mapping[str, str],
        combos: Iterable[Combo],
        models: Mapping[str, list[str]],
    ) -> None:
        """
        :param providers: provider instances of the active connections, by connection id.
        :param aliases: alias -> target model name.
        :param combos: the combos.
        :param models: known model names per connection id (for bare names).
        """
        self.by_prefix: dict[str, list[Provider]] = {}
        for provider in sorted(providers.values(),
                               key=lambda p: (p.connection.priority, p.connection.created_at)):
            self.by_prefix.setdefault(provider.connection.prefix, []).append(provider)
        self.aliases = {a: t for a, t in aliases.items() if not _is_pattern(a)}
        self.patterns = [(a, t) for a, t in aliases.items() if _is_pattern(a)]
        self.combos = {c.name: c for c in combos}
        self.bare: dict[str, set[str]] = {}
        self._routes: dict[tuple[str, str | None], Route] = {}
        for provider in providers.values():
            for model in models.get(provider.connection.id, []):
                self.bare.setdefault(model, set()).add(provider.connection.prefix)

    def resolve(self, model: str, *, prefix: str | None = None) -> Route:
        """The targets for ``model``; ``prefix`` pins one provider prefix.

        A router is one snapshot of the configuration, and a route holds only frozen
        objects: each name resolved is kept (at most :data:`ROUTES_KEPT` of them), so
        a request for a known name finds its route in one lookup."""
        key = (model, prefix)
        route = self._routes.get(key)
        if route is None:
            route = self._route(model, prefix)  # a name that does not resolve raises
            if len(self._routes) >= ROUTES_KEPT:
                self._routes.clear()
            self._routes[key] = route
        return route

    def _route(self, model: str, prefix: str | None) -> Route:
        if prefix is not None:
            return Route(model, self._pinned(model, prefix))
        combo = self.combos.get(model)
        targets = self._resolve(model, 0)
        if combo is None:
            return Route(model, tuple(targets))
        return Route(model, tuple(targets), combo.name, combo.strategy)

    def _pinned(self, model: str, prefix: str) -> tuple[Target, ...]:
        if prefix not in self.by_prefix:
            raise ModelNotFound(f"No active connection has the prefix {prefix!r}.")
        head, sep, rest = model.partition("/")
        if sep and head in self.by_prefix and head != prefix:
            raise InvalidRequest(
                f"Model {model!r} belongs to provider {head!r}, not {prefix!r}.",
                param="model", code="model_provider_mismatch")
        name = rest if sep and head == prefix else model
        return tuple(Target(p.connection, p, name) for p in self.by_prefix[prefix])

    def _resolve(self, model: str, depth: int) -> list[Target]:
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"Model {model!r} nests aliases or combos too deeply.",
                                 param="model", code="model_resolution_loop")
        combo = self.combos.get(model)
        if combo is not None:
            targets: list[Target] = []
            for group, step in enumerate(combo.steps):
                found = self._resolve(step_model(step), depth + 1)
                targets.extend(_from_step(step, found, group))
            return _unique(targets)
        head, sep, rest = model.partition("/")
        if sep and head in self.by_prefix and rest:
            return [Target(p.connection, p, rest) for p in self.by_prefix[head]]
        target = self.aliases.get(model) or next(
            (t for a, t in self.patterns if fnmatch.fnmatchcase(model, a)), None)
        if target is not None:
            return self._resolve(target, depth + 1)
        prefixes = self.bare.get(model)
        if prefixes and len(prefixes) == 1:
            (only,) = prefixes
            return [Target(p.connection, p, model) for p in self.by_prefix[only]]
        if prefixes:
            options = ", ".join(sorted(f"{p}/{model}" for p in prefixes))
            raise InvalidRequest(
                f"Model {model!r} is offered by several providers; choose one of: {options}.",
                param="model", code="ambiguous_model")
        known = (", ".join(sorted(self.by_prefix))
                 or "none yet: add one with `omniroute providers add`")
        close = self.suggest(model)
        hint = f" Did you mean {' or '.join(repr(m) for m in close)}?" if close else ""
        raise ModelNotFound(
            f"Model {model!r} is not known.{hint} Use 'prefix/model' with a configured prefix "
            f"({known}), an alias or a combo name; GET /v1/models lists them.",
            param="model")

    def suggest(self, model: str) -> list[str]:
        """Up to three known model names close to ``model`` (for error hints)."""
        import difflib  # here: only a model no route knows needs it

        names = [*self.combos, *self.aliases]
        for bare, prefixes in self.bare.items():
            names.append(bare)
            names.extend(f"{p}/{bare}" for p in prefixes)
        return difflib.get_close_matches(model, names, n=3, cutoff=0.6)


def step_model(step: object) -> str:
    """The model name of a combo step (a string, or a dict with ``model``)."""
    if isinstance(step, str):
        return step
    if isinstance(step, dict) and isinstance(step.get("model"), str):
        model = step["model"]
        provider = step.get("provider")
        return f"{provider}/{model}" if provider and not model.startswith(f"{provider}/") else model
    raise ValueError(f"a combo step must be 'prefix/model' or {{'model': ...}}, got {step!r}")


def _from_step(step: object, targets: list[Target], group: int) -> list[Target]:
    """A combo step's targets: pinned to its ``connection`` and carrying its ``weight``."""
    weight, pinned = 1.0, None
    if isinstance(step, dict):
        weight = float(step.get("weight", 1.0))
        pinned = step.get("connection")
    out = []
    for t in targets:
        if pinned is not None and pinned not in (t.connection.id, t.connection.name):
            continue
        out.append(Target(t.connection, t.provider, t.model, group, weight))
    return out


def _is_pattern(alias: str) -> bool:
    return any(c in alias for c in "*?[")


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[tuple[str, str]] = set()
    out = []
    for t in targets:
        key = (t.connection.id, t.model)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out
