"""The tools' own file formats, read and rewritten so that the user's other settings stay.

* JSON, also with comments and trailing commas (Gemini CLI, Qwen Code and OpenCode
  accept those); rewritten as plain JSON, key order kept.
* TOML through tomlkit, which keeps comments, order and layout (Codex).
* YAML: top-level ``key: value`` lines are replaced in place, so comments and the
  rest of the file stay as they were; the result is parsed back and, should it not
  say exactly what was meant (an unusual layout), the whole mapping is written
  instead (:func:`set_yaml_keys`). Nested changes write the whole mapping.
* dotenv: ``KEY=value`` lines replaced in place, others kept (Gemini CLI's ``.env``).

And the one way files are written: atomically (a temporary file in the same
directory, then a rename), through a symlink to its target, keeping the mode of
the file it replaces.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniroute.clitools.tool import ConfigUnreadable

if TYPE_CHECKING:
    from tomlkit.toml_document import TOMLDocument

# ---------------------------------------------------------------------- reading and writing


def read_text(path: Path) -> str | None:
    """The text of ``path`` (through a symlink), None when there is no such file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError):
        raise ConfigUnreadable(path, "is not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigUnreadable(path, f"is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigUnreadable(path, exc.strerror or str(exc)) from None


def missing_dirs(path: Path) -> list[Path]:
    """The directories above ``path`` that do not exist yet, outermost first."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing[::-1]


def write_atomic(path: Path, data: bytes, *, private: bool = False,
                 mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` in one rename (a symlink's target is written).

    :param private: a new file is readable by its owner only (it holds a key).
    :param mode: the permission bits to give it (default: the replaced file's, else
        0600 when ``private``, else 0644).
    """
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600 if private else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".omniroute",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- JSON


def load_json(path: Path, text: str | None) -> tuple[dict[str, Any], bool]:
    """The object in ``text`` (empty when there is none) and whether comments or
    trailing commas had to be dropped to read it."""
    if text is None or not text.strip():
        return {}, False
    try:
        data, lossy = json.loads(text), False
    except json.JSONDecodeError:
        try:
            data, lossy = json.loads(strip_json_comments(text)), True
        except json.JSONDecodeError as exc:
            raise ConfigUnreadable(path, f"is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigUnreadable(path, "does not hold a JSON object")
    return data, lossy


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def strip_json_comments(text: str) -> str:
    """``text`` without ``//`` and ``/* */`` comments and trailing commas (JSONC)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i:end + 1])
            i = end + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
        elif c == ",":
            rest = i + 1
            while rest < n and text[rest] in " \t\r\n":
                rest += 1
            if rest >= n or text[rest] not in "}]":
                out.append(c)  # a trailing comma (before } or ]) is dropped
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------- TOML


def load_toml(path: Path, text: str | None) -> TOMLDocument:
    import tomlkit  # here, as yaml below: only a CLI's configuration is written with them

    try:
        return tomlkit.parse(text or "")
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigUnreadable(path, f"is not valid TOML: {exc}") from None


# ---------------------------------------------------------------------- YAML


def load_yaml(path: Path, text: str | None) -> dict[str, Any]:
    """The mapping in ``text`` (empty when there is none)."""
    if text is None or not text.strip():
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigUnreadable(path, f"is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigUnreadable(path, "does not hold a YAML mapping")
    return data


def dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False)


def set_yaml_keys(path: Path, text: str | None, values: dict[str, Any]) -> tuple[str, bool]:
    """``text`` with top-level ``values`` set; and whether it had to be rewritten whole
    (comments lost) because the line-by-line edit did not read back as meant."""
    expected = {**load_yaml(path, text), **values}
    lines = (text or "").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for key, value in values.items():
        line = dump_yaml({key: value})
        found = _yaml_key_lines(lines, key)
        if len(found) > 1:  # the key twice: only a rewrite says it once
            return dump_yaml(expected), True
        if not found:
            lines.append(line)
            continue
        start = found[0]
        end = start + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t", "-"):
            end += 1  # the old value's continuation lines
        lines[start:end] = [line]
    edited = "".join(lines)
    import yaml

    try:
        if yaml.safe_load(edited) == expected:
            return edited, False
    except yaml.YAMLError:
        pass  # an unusual layout: written whole below
    return dump_yaml(expected), True


def _yaml_key_lines(lines: list[str], key: str) -> list[int]:
    """The lines where top-level ``key`` starts (plain or quoted)."""
    pattern = re.compile(rf"""(?:{re.escape(key)}|'{re.escape(key)}'|"{re.escape(key)}")"""
                         r"\s*:(?:\s|$)")
    return [i for i, line in enumerate(lines) if pattern.match(line)]


# ---------------------------------------------------------------------- dotenv

_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@+\-,]*")


def set_dotenv(text: str | None, values: dict[str, str]) -> str:
    """``text`` with ``KEY=value`` set for each of ``values``; other lines kept."""
    lines = (text or "").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for key, value in values.items():
        rendered = f"{key}={_env_value(value)}\n"
        places = [i for i, line in enumerate(lines)
                  if (m := _ENV_LINE.match(line)) and m.group(1) == key]
        if not places:
            lines.append(rendered)
            continue
        prefix = "export " if lines[places[0]].lstrip().startswith("export") else ""
        lines[places[0]] = prefix + rendered
        for i in reversed(places[1:]):  # a later duplicate would win: drop it
            del lines[i]
    return "".join(lines)


def parse_dotenv(text: str | None) -> dict[str, str]:
    """The ``KEY=value`` pairs of a dotenv file (quotes removed; the last one wins)."""
    found: dict[str, str] = {}
    for line in (text or "").splitlines():
        m = _ENV_LINE.match(line)
        if not m:
            continue
        value = line[m.end():].strip()
        if value[:1] in ('"', "'") and len(value) > 1 and value.endswith(value[0]):
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace('\\"', '"').replace("\\\\", "\\")
        else:
            value = value.split(" #", 1)[0].strip()
        found[m.group(1)] = value
    return found


def _env_value(value: str) -> str:
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
