"""Custom tools: agent CLIs the user names, kept in the database and detected like the others.

omniroute does not know where a custom tool keeps its settings, so it finds it
(binary on ``PATH``, or the files the user names) and reports its version, but
``configure`` explains what to set instead of writing anything. They live in the
settings table under a private key (``_cli_tools``), which ``/api/settings``
neither shows nor replaces.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omniroute.clitools.tool import PROTOCOLS, CliTool, Places
from omniroute.errors import InvalidRequest, NotFound
from omniroute.storage import Store

log = logging.getLogger(__name__)

SETTING = "_cli_tools"
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_BINARY = re.compile(r"[A-Za-z0-9._+-]{1,128}")
_FIELDS = {"id", "name", "binary", "protocol", "versionArgs", "version_args", "configPaths",
           "config_paths"}

#: placeholders filled in when configure is asked (CliTools.configure)
_MANUAL = ("omniroute does not know where {name} keeps its settings: point it at {url} "
           "(the {protocol} API) with an omniroute API key and the model {model}.")


def _paths(spec: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(spec.get("configPaths", spec.get("config_paths")) or ())


def custom_tool(spec: Mapping[str, Any]) -> CliTool:
    """The tool a stored (or submitted) spec describes; ``ValueError`` says what is wrong."""
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    binary = spec.get("binary")
    if not isinstance(binary, str) or not _BINARY.fullmatch(binary):
        raise ValueError("'binary' must be the executable's name (letters, digits, '.', '_', "
                         "'+', '-'), looked up on PATH")
    tool_id = spec.get("id") or binary.lower()
    if not isinstance(tool_id, str) or not _ID.fullmatch(tool_id):
        raise ValueError("'id' must be lower-case letters, digits, '.', '_' or '-' "
                         "(at most 64)")
    name = spec.get("name") or binary
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ValueError("'name' must be a short text")
    protocol = spec.get("protocol", "openai")
    if protocol not in PROTOCOLS:
        raise ValueError(f"'protocol' must be one of {', '.join(PROTOCOLS)}")
    args = spec.get("versionArgs", spec.get("version_args", ["--version"]))
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ValueError("'versionArgs' must be a list of strings")
    paths = _paths(spec)
    if not all(isinstance(p, str) and p.strip() for p in paths):
        raise ValueError("'configPaths' must be a list of paths ('~/' is the home)")

    def config_paths(places: Places) -> list[Path]:
        return [places.home / p[2:] if p.startswith("~/") else Path(p) for p in paths]

    return CliTool(id=tool_id, name=name.strip(), binaries=(binary,), protocol=protocol,
                   config_paths=config_paths, version_args=tuple(args), is_custom=True,
                   manual=_MANUAL.replace("{name}", name.strip()))


def as_spec(tool: CliTool, spec: Mapping[str, Any]) -> dict[str, Any]:
    """What is stored of a custom tool."""
    return {"id": tool.id, "name": tool.name, "binary": tool.binary, "protocol": tool.protocol,
            "versionArgs": list(tool.version_args), "configPaths": list(_paths(spec))}


async def stored_specs(store: Store) -> list[dict[str, Any]]:
    specs = (await store.get_settings()).get(SETTING) or []
    return [s for s in specs if isinstance(s, dict)]


async def load_custom(store: Store) -> list[CliTool]:
    """The custom tools stored; one whose spec no longer reads is left out."""
    tools = []
    for spec in await stored_specs(store):
        try:
            tools.append(custom_tool(spec))
        except ValueError as exc:  # written by a newer version, or by hand
            log.warning("custom CLI tool %r left out: %s", spec.get("id"), exc)
    return tools


async def save_custom(store: Store, specs: list[dict[str, Any]]) -> None:
    await store.put_settings({SETTING: specs})


async def add_custom(store: Store, spec: Mapping[str, Any], taken: Iterable[str]) -> CliTool:
    """Store the custom tool ``spec`` describes.

    :param taken: the ids of the other (built-in and plugin) tools.
    """
    try:
        tool = custom_tool(spec)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_cli_tool") from None
    specs = await stored_specs(store)
    if tool.id in set(taken) or any(s.get("id") == tool.id for s in specs):
        raise InvalidRequest(f"A CLI tool {tool.id!r} exists already.", param="id",
                             code="duplicate_id")
    await save_custom(store, [*specs, as_spec(tool, spec)])
    return tool


async def remove_custom(store: Store, tool_id: str, taken: Iterable[str]) -> None:
    """Forget the custom tool ``tool_id`` (``taken``: the ids that are not custom)."""
    if tool_id in set(taken):
        raise InvalidRequest(f"{tool_id!r} is not a custom tool; only those can be removed.",
                             code="not_custom")
    specs = await stored_specs(store)
    kept = [s for s in specs if s.get("id") != tool_id]
    if len(kept) == len(specs):
        raise NotFound(f"No custom CLI tool {tool_id!r}.", code="unknown_cli_tool")
    await save_custom(store, kept)
