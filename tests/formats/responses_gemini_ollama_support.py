"""Helpers shared by the responses / gemini / ollama format tests.

Golden files live in ``golden/``; each holds an ``input`` taken from the
provider's public docs, the ``canonical`` form it decodes to and the ``output``
the format encodes back. ``OMNIROUTE_REGEN_GOLDEN=1`` rewrites them (review the
diff before committing).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from omniroute.formats import canonical as c
from omniroute.formats import ids
from omniroute.sse import SSESplitter

GOLDEN = Path(__file__).parent / "golden"


def dump(value: Any) -> Any:
    """Canonical objects as plain JSON data, each tagged with its type."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"_type": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = dump(getattr(value, f.name))
        return out
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def load(name: str) -> dict[str, Any]:
    return orjson.loads((GOLDEN / f"{name}.json").read_bytes())


def check(name: str, key: str, actual: Any) -> None:
    """Compare ``actual`` with ``golden/<name>.json[key]`` exactly (or rewrite it)."""
    path = GOLDEN / f"{name}.json"
    data = orjson.loads(path.read_bytes())
    actual = orjson.loads(orjson.dumps(actual))
    if os.environ.get("OMNIROUTE_REGEN_GOLDEN"):
        data[key] = actual
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return
    assert actual == data[key], f"{name}: {key} differs from the golden file"


def raw(name: str, ext: str) -> bytes:
    return (GOLDEN / f"{name}.{ext}").read_bytes()


def sse_events(body: bytes) -> list[bytes]:
    splitter = SSESplitter()
    return [*splitter.feed(body), *([t] if (t := splitter.tail()) else [])]


async def aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated ids and timestamps become predictable (``..0001``, ``..0002``…)."""
    counter = itertools.count(1)

    monkeypatch.setattr(ids, "_token", lambda: f"{next(counter):032x}")
    monkeypatch.setattr("omniroute.formats.responses.response.now", lambda: 1741476542)
    for module in ("response", "stream"):
        monkeypatch.setattr(f"omniroute.formats.ollama.{module}.now",
                            lambda: "2024-01-01T00:00:00Z")


# a canonical answer with every kind of part, shared by the encoder tests
def full_answer(source: str = "anthropic") -> list[c.Event]:
    return [
        c.Start("abc", "m"),
        c.PartStart(0, c.Reasoning(source=source)),
        c.ReasoningDelta(0, text="Let me think."),
        c.ReasoningDelta(0, signature="SIG=="),
        c.PartStop(0),
        c.PartStart(1, c.Text("")),
        c.TextDelta(1, "Hello"),
        c.TextDelta(1, " world"),
        c.PartStop(1),
        c.PartStart(2, c.ToolCall("call_1", "get_weather")),
        c.ToolArgsDelta(2, '{"location":'),
        c.ToolArgsDelta(2, '"Paris"}'),
        c.PartStop(2),
        c.PartStart(3, c.ToolCall("call_2", "get_time")),
        c.ToolArgsDelta(3, "{}"),
        c.PartStop(3),
        c.Finish("tool_use", c.Usage(100, 20, 30, None, 5)),
    ]
