"""Building and checking configuration records from user input.

Shared by the management API and the CLI, so both validate the same way.
"""

from __future__ import annotations

import re
from typing import Any

from omniroute.plugins import Plugins
from omniroute.providers.base import Preset, Provider
from omniroute.routing import step_model
from omniroute.storage.store import Combo, Connection, new_id

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONNECTION_FIELDS = {
    "type", "preset", "name", "prefix", "base_url", "api_key", "credentials", "settings",
    "models", "headers", "priority", "active",
}
_COMBO_FIELDS = {"name", "steps", "models", "strategy"}


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
    ``priority``, ``active``. Raise ``ValueError`` with a readable message.
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
        cls = plugins.providers.get(str(type_name))
        if cls is None:
            raise ValueError(plugins.failure_for("providers", str(type_name)))

    settings = dict(existing.settings) if existing else {}
    if "settings" in spec:
        if not isinstance(spec["settings"], dict):
            raise ValueError("settings must be an object")
        settings.update(spec["settings"])
    for key in ("base_url", "models", "headers"):
        if key in spec:
            settings[key] = spec[key]
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


def build_combo(spec: dict[str, Any], combos: list[Combo], existing: Combo | None = None) -> Combo:
    """A validated :class:`Combo`; cycles through other combos are refused."""
    unknown = set(spec) - _COMBO_FIELDS
    if unknown:  # a misspelled field would otherwise be ignored without a word
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    name = spec.get("name", existing.name if existing else None)
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ValueError("a combo needs a name of 1-100 characters")
    steps = spec.get("steps", spec.get("models", existing.steps if existing else None))
    if not isinstance(steps, list) or not steps:
        raise ValueError("a combo needs a non-empty list of steps ('prefix/model' strings)")
    for step in steps:
        step_model(step)  # raises ValueError on a malformed step
    strategy = spec.get("strategy", existing.strategy if existing else "priority")
    if strategy != "priority":
        raise ValueError("only the 'priority' strategy (ordered fallback) is available")
    others = {c.name: c for c in combos if not existing or c.id != existing.id}
    if name in others:
        raise ValueError(f"a combo named {name!r} already exists")
    combo = Combo(existing.id if existing else new_id("combo"), name, steps, strategy,
                  existing.created_at if existing else 0.0)
    _check_cycles(combo, {**others, name: combo})
    return combo


def _check_cycles(combo: Combo, by_name: dict[str, Combo]) -> None:
    def visit(current: Combo, path: list[str]) -> None:
        for step in current.steps:
            ref = by_name.get(step_model(step))
            if ref is None:
                continue
            if ref.name in path:
                raise ValueError(f"combo cycle: {' -> '.join(path + [ref.name])}")
            visit(ref, path + [ref.name])

    visit(combo, [combo.name])
