"""Building and checking configuration records from user input.

Shared by the management API and the CLI, so both validate the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from omniroute.errors import GatewayError
from omniroute.plugins import Plugins
from omniroute.providers.base import Preset, Provider
from omniroute.resilience.strategies import STRATEGIES, normalize
from omniroute.routing import Target, step_model
from omniroute.storage.store import Combo, Connection, new_id

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONNECTION_FIELDS = {
    "type", "preset", "name", "prefix", "base_url", "api_key", "credentials", "settings",
    "models", "headers", "priority", "active", "max_concurrency", "rpm", "weight",
}
#: connection settings the resilience layer reads; also accepted as top-level fields
_LIMIT_SETTINGS = ("max_concurrency", "rpm", "weight")
_COMBO_FIELDS = {"name", "steps", "models", "strategy"}
_STEP_FIELDS = {"model", "provider", "connection", "weight"}

#: resolves a model name to its targets, raising a GatewayError when it cannot
Resolve = Callable[[str], Sequence[Target]]


def find_preset(
    plugins: Plugins, name: str, type_name: str | None = None
) -> tuple[type[Provider], Preset]:
    """The provider type and preset called ``name`` (of ``type_name`` when given)."""
    offering = [cls for cls in plugins.providers.values() if name in cls.presets
                and type_name in (None, cls.type)]
    if len(offering) == 1:
        return offering[0], offering[0].presets[name]
    if offering:  # two plugins chose the same preset name: the user must say which
        types = ", ".join(sorted(cls.type for cls in offering))
        raise ValueError(f"preset {name!r} is offered by several provider types ({types}); "
                         "give the type as well")
    known = sorted(p for cls in plugins.providers.values() for p in cls.presets)
    where = f" of type {type_name!r}" if type_name else ""
    raise ValueError(f"unknown preset {name!r}{where}; known presets: {', '.join(known)}")


def build_connection(
    plugins: Plugins, spec: dict[str, Any], existing: Connection | None = None
) -> Connection:
    """A validated :class:`Connection` from ``spec`` (merged over ``existing``).

    ``spec`` keys: ``type`` or ``preset``, ``name``, ``prefix``, ``base_url``,
    ``api_key`` (or ``credentials``), ``models``, ``headers``, ``settings``,
    ``priority``, ``active``, and the resilience settings ``max_concurrency``,
    ``rpm`` (positive whole numbers) and ``weight`` (a number >= 0), which may also
    be given inside ``settings``; ``null`` removes one. Raise ``ValueError`` with a
    readable message.
    """
    unknown = set(spec) - _CONNECTION_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    preset_name = spec.get("preset") or (existing.settings.get("preset") if existing else None)
    preset: Preset | None = None
    if preset_name:
        wanted = spec.get("type") or (existing.type if existing else None)
        cls, preset = find_preset(plugins, str(preset_name), wanted)
    else:
        type_name = spec.get("type") or (existing.type if existing else None)
        if not type_name:
            raise ValueError("give a provider 'type' or a 'preset'")
        if str(type_name) not in plugins.providers:
            raise ValueError(plugins.failure_for("providers", str(type_name)))
        cls = plugins.providers[str(type_name)]

    settings = dict(existing.settings) if existing else {}
    if "settings" in spec:
        if not isinstance(spec["settings"], dict):
            raise ValueError("settings must be an object")
        settings.update(spec["settings"])
    for key in ("base_url", "models", "headers", *_LIMIT_SETTINGS):
        if key in spec:
            settings[key] = spec[key]
    _check_limits(settings)
    if preset:
        settings["preset"] = preset.name

    credentials = dict(existing.credentials) if existing else {}
    if "credentials" in spec:
        if not isinstance(spec["credentials"], dict):
            raise ValueError("credentials must be an object")
        credentials = {k: v for k, v in spec["credentials"].items() if v is not None}
    if spec.get("api_key") is not None:
        if not isinstance(spec["api_key"], str):
            raise ValueError("api_key must be a string")
        credentials["api_key"] = spec["api_key"]

    settings, credentials = cls.configure(settings, credentials, preset)

    prefix = spec.get("prefix") or (existing.prefix if existing else None) or (
        preset.prefix if preset else cls.default_prefix or cls.type)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError("prefix must be 1-64 letters, digits, '.', '_' or '-' (no '/')")
    name = spec.get("name") or (existing.name if existing else None) or prefix
    priority = spec.get("priority", existing.priority if existing else 0)
    active = spec.get("active", existing.active if existing else True)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError("priority must be an integer")
    if not isinstance(active, bool):
        raise ValueError("active must be true or false")
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    return Connection(
        id=existing.id if existing else new_id("conn"),
        type=cls.type,
        name=name,
        prefix=prefix,
        settings=settings,
        credentials=credentials,
        active=active,
        priority=priority,
        created_at=existing.created_at if existing else 0.0,
    )


def build_combo(
    spec: dict[str, Any],
    combos: list[Combo],
    existing: Combo | None = None,
    *,
    connections: Iterable[Connection] | None = None,
    resolve: Resolve | None = None,
) -> Combo:
    """A validated :class:`Combo`; raise ``ValueError`` with a readable message.

    Checked: the fields, the name (unique), a non-empty list of well-formed
    steps, the strategy (one of :data:`~omniroute.resilience.STRATEGIES`, in the
    settings' spelling rules: ``Round_Robin`` is ``round-robin``), positive step
    weights, and no cycle through other combos.

    :param combos: every stored combo (names, cycles).
    :param existing: the combo being changed (its id and defaults).
    :param connections: every stored connection: a step's ``connection`` must
        name one of them by id or name (not checked when omitted).
    :param resolve: model name -> targets, raising a ``GatewayError`` when the
        name does not resolve (the live router's): every step must resolve, and
        a step's pinned ``connection`` must be among its targets (not checked
        when omitted).
    """
    unknown = set(spec) - _COMBO_FIELDS
    if unknown:  # a misspelled field would otherwise be ignored without a word
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    name = spec.get("name", existing.name if existing else None)
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ValueError("a combo needs a name of 1-100 characters")
    steps = spec.get("steps", spec.get("models", existing.steps if existing else None))
    if not isinstance(steps, list) or not steps:
        raise ValueError("a combo needs a non-empty list of steps ('prefix/model' strings)")
    known = None if connections is None else list(connections)
    for index, step in enumerate(steps, 1):
        _check_step(index, step, known)
    raw = spec.get("strategy", existing.strategy if existing else "priority")
    strategy = normalize(raw) if isinstance(raw, str) else None
    if strategy is None:
        raise ValueError(f"unknown strategy {raw!r}; expected one of {', '.join(STRATEGIES)}")
    others = {c.name: c for c in combos if not existing or c.id != existing.id}
    if name in others:
        raise ValueError(f"a combo named {name!r} already exists")
    combo = Combo(existing.id if existing else new_id("combo"), name, steps, strategy,
                  existing.created_at if existing else 0.0)
    _check_cycles(combo, {**others, name: combo})
    if resolve is not None:
        problems = unresolved_steps(steps, resolve, known)
        if problems:
            raise ValueError("; ".join(problems))
    return combo


def unresolved_steps(
    steps: list[Any], resolve: Resolve, connections: list[Connection] | None = None
) -> list[str]:
    """What is wrong with each step that ``resolve`` cannot serve (empty: all resolve).

    A step fails when its model does not resolve (the message carries the
    router's did-you-mean hint), or when it pins an active ``connection`` that
    is not among the targets its model resolves to.
    """
    active = {c.id: c for c in connections or () if c.active}
    problems = []
    for index, step in enumerate(steps, 1):
        model = step_model(step)
        try:
            targets = resolve(model)
        except GatewayError as err:
            problems.append(f"step {index} ({model!r}): {err.message}")
            continue
        pinned = step.get("connection") if isinstance(step, dict) else None
        if pinned is None or not any(pinned in (c.id, c.name) for c in active.values()):
            continue  # no pin, or it pins a connection that is switched off for now
        if not any(pinned in (t.connection.id, t.connection.name) for t in targets):
            serving = ", ".join(sorted({t.connection.name for t in targets})) or "none"
            problems.append(f"step {index} ({model!r}) pins connection {pinned!r}, which does "
                            f"not serve that model (served by: {serving})")
    return problems


def _check_step(index: int, step: Any, connections: list[Connection] | None) -> None:
    step_model(step)  # raises ValueError on a malformed step
    if not isinstance(step, dict):
        return
    unknown = set(step) - _STEP_FIELDS
    if unknown:
        raise ValueError(f"step {index}: unknown field(s) {', '.join(sorted(unknown))} "
                         f"(a step has {', '.join(sorted(_STEP_FIELDS))})")
    if "weight" in step and not _positive_number(step["weight"]):
        raise ValueError(f"step {index}: weight must be a positive number, got {step['weight']!r}")
    if "connection" not in step:
        return
    pinned = step["connection"]
    if not isinstance(pinned, str) or not pinned:
        raise ValueError(f"step {index}: connection must be a connection id or name")
    if connections is not None and not any(pinned in (c.id, c.name) for c in connections):
        names = ", ".join(sorted(c.name for c in connections)) or "none configured"
        raise ValueError(f"step {index}: no connection {pinned!r} (connections: {names})")


def _positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _check_limits(settings: dict[str, Any]) -> None:
    """Validate the resilience settings of a connection in place (``None`` removes one)."""
    for key in _LIMIT_SETTINGS:
        if key not in settings:
            continue
        value = settings[key]
        if value is None:
            del settings[key]
        elif key == "weight":
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f"weight must be a number of at least 0, got {value!r}")
        elif isinstance(value, float) and value.is_integer() and value > 0:
            settings[key] = int(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive whole number, got {value!r}")


def _check_cycles(combo: Combo, by_name: dict[str, Combo]) -> None:
    def visit(current: Combo, path: list[str]) -> None:
        for step in current.steps:
            ref = by_name.get(step_model(step))
            if ref is None:
                continue
            if ref.name in path:
                raise ValueError(f"combo cycle: {' -> '.join([*path, ref.name])}")
            visit(ref, [*path, ref.name])

    visit(combo, [combo.name])
