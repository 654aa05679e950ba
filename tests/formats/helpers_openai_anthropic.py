"""Shared by the openai / anthropic format tests: golden files, SDK judges, stream tools."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from omniroute.formats import canonical as c
from omniroute.formats.anthropic import AnthropicFormat
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.openai import OpenAIFormat
from omniroute.sse import SSESplitter, event_data, event_name

GOLDEN = Path(__file__).parent / "golden"
FORMATS: dict[str, Format] = {"openai": OpenAIFormat(), "anthropic": AnthropicFormat()}


async def aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def frames_of(text: str) -> list[bytes]:
    """SSE text (as in the docs) split into whole events."""
    splitter = SSESplitter()
    frames = list(splitter.feed(text.encode()))
    tail = splitter.tail()
    return frames + ([tail] if tail else [])


def parse_frames(frames: Iterable[bytes]) -> list[dict[str, Any]]:
    """Each frame as ``{"event": name?, "data": json or "[DONE]"}``."""
    out = []
    for frame in frames:
        data = event_data(frame)
        if data is None:
            out.append({"comment": frame.decode()})
            continue
        item: dict[str, Any] = {}
        name = event_name(frame)
        if name is not None:
            item["event"] = name
        item["data"] = "[DONE]" if data == b"[DONE]" else orjson.loads(data)
        out.append(item)
    return out


def request_of(fmt: str, body: dict[str, Any]) -> c.Request:
    f = FORMATS[fmt]
    model, stream = f.inspect(body)
    return f.decode_request(ClientRequest(body, model, stream))


def drop_keys(value: Any, keys: Iterable[str]) -> Any:
    keys = set(keys)
    if isinstance(value, dict):
        return {k: drop_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [drop_keys(v, keys) for v in value]
    return value


def golden_cases(prefix: str) -> list[Path]:
    return sorted(GOLDEN.glob(f"{prefix}_*.json"))


async def run_golden(path: Path) -> tuple[Any, Any]:
    """``(actual, expected)`` for one golden file.

    A file names ``source`` and ``target`` formats and a ``kind``:

    * ``request``: ``input`` is a client body in ``source``; ``expected`` the
      upstream body ``target.encode_request`` makes (``client``: the settings);
    * ``response``: ``input`` is an upstream JSON answer in ``source``;
      ``expected`` the ``target`` client body (``request`` optionally gives the
      client request, in ``target``'s format);
    * ``stream``: ``input`` is the upstream SSE text in ``source``; ``expected``
      the ``target`` frames, parsed (``request`` as above).

    ``ignore`` lists keys removed on both sides (generated ids, timestamps).
    """
    case = json.loads(path.read_text())
    source, target = FORMATS[case["source"]], FORMATS[case["target"]]
    if case["kind"] == "request":
        canonical = request_of(case["source"], case["input"])
        actual: Any = target.encode_request(canonical, case.get("client"))
    else:
        client_body = case.get("request") or (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        request = request_of(case["target"], client_body)
        if case["kind"] == "response":
            response = source.decode_response(orjson.dumps(case["input"]))
            actual = orjson.loads(target.encode_response(response, request))
        else:
            events = source.decode_stream(aiter(frames_of(case["input"])))
            actual = parse_frames(await collect(target.encode_stream(events, request)))
    ignore = case.get("ignore", [])
    return drop_keys(actual, ignore), drop_keys(case["expected"], ignore)


# ------------------------------------------------------------------ an Anthropic stream checker


def check_anthropic_sequence(frames: list[bytes]) -> list[dict[str, Any]]:
    """Assert the documented event order; return the parsed events (pings dropped)."""
    events = parse_frames(frames)
    for e in events:
        assert e["event"] == e["data"]["type"], e
    events = [e for e in events if e["event"] != "ping"]
    names = [e["event"] for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    start = events[0]["data"]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert isinstance(start["usage"]["input_tokens"], int)
    expected_index, open_index = 0, None
    for e in events[1:-2]:
        data = e["data"]
        if e["event"] == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == expected_index, "block indexes must be sequential"
            open_index, expected_index = data["index"], expected_index + 1
        elif e["event"] == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
        elif e["event"] == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected {e['event']} between blocks")
    assert open_index is None
    final = events[-2]["data"]
    assert final["delta"]["stop_reason"] is not None
    assert isinstance(final["usage"]["output_tokens"], int)
    return events


# ------------------------------------------------------------------ SDK judges


def sse_app(path: str, frames: list[bytes], *, json_body: bytes | None = None) -> web.Application:
    """An app answering ``POST path`` with ``frames`` (SSE) or ``json_body``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            assert json_body is not None
            return web.Response(body=json_body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(path, handler)
    return app


def canonical_dict(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ------------------------------------------------------------------ random canonical requests


def random_request(rng: Any, fmt: str) -> c.Request:
    """A random canonical request in ``fmt``'s normal form (what its decoder produces).

    Both formats: leading system text, user turns with text / images / documents,
    assistant turns with reasoning, text and parallel tool calls, one tool
    message per batch of results (each result named after its call), sampling,
    tools and tool choice, structured output and reasoning settings.
    """
    anthropic = fmt == "anthropic"
    words = ["alpha", "beta", "gamma", "δέλτα", "emoji 🚀", "quote \" and \\ slash", "new\nline"]

    def text() -> c.Text:
        cache = {"type": "ephemeral"} if anthropic and rng.random() < 0.3 else None
        return c.Text(" ".join(rng.sample(words, rng.randint(1, 3))), cache_control=cache)

    def media() -> c.Part:
        roll = rng.random()
        if roll < 0.3:
            return c.Image(media_type="image/png", data="iVBORw0KGgo=",
                           detail=None if anthropic else rng.choice([None, "low", "high"]))
        if roll < 0.5:
            return c.Image(url="https://example.com/cat.jpg")
        if roll < 0.7:
            return c.File(media_type="application/pdf", data="JVBERi0=", filename="a.pdf")
        return text()

    tool_names = ["get_weather", "mcp__fs__read-file", "Bash"]
    tools = [c.Tool(n, rng.choice([None, f"{n} tool"]),
                    {"type": "object", "properties": {"x": {"type": "integer"}}},
                    rng.choice([None, True])) for n in rng.sample(tool_names, rng.randint(0, 3))]
    messages: list[c.Message] = []
    for turn in range(rng.randint(1, 4)):
        messages.append(c.Message("user", [media() for _ in range(rng.randint(1, 3))]))
        if turn == 0 and rng.random() < 0.5:
            continue
        parts: list[c.Part] = []
        if rng.random() < 0.5:
            parts.append(c.Reasoning("thinking…", signature="sig==", source="anthropic")
                         if anthropic else c.Reasoning("thinking…", source="openai"))
        if rng.random() < 0.7:
            parts.append(c.Text(rng.choice(words)))
        calls = [c.ToolCall(f"call_{turn}_{k}", rng.choice(tool_names),
                            '{"x":' + str(k) + "}") for k in range(rng.randint(0, 3))]
        parts += calls
        if not parts:
            parts.append(c.Text("ok"))
        messages.append(c.Message("assistant", parts))
        if calls:
            messages.append(c.Message("tool", [
                c.ToolResult(t.id, [c.Text(f"result {t.id}")], name=t.name,
                             is_error=anthropic and rng.random() < 0.3) for t in calls]))
    if messages[-1].role != "user":
        messages.append(c.Message("user", [text()]))
    request = c.Request(
        model="model-x",
        messages=messages,
        system=[text() for _ in range(rng.randint(0, 2))],
        tools=tools,
        tool_choice=rng.choice([None, c.ToolChoice("auto"), c.ToolChoice("required")])
        if tools else None,
        max_tokens=rng.choice([256, 1000]) if anthropic else rng.choice([None, 256]),
        temperature=rng.choice([None, 0.0, 0.5]),
        top_p=rng.choice([None, 0.9]),
        stop=rng.sample(["END", "###"], rng.randint(0, 2)),
        response_format=rng.choice([None, c.ResponseFormat("json_schema", {"type": "object"},
                                                           None if anthropic else "out",
                                                           None if anthropic else True)]),
        stream=rng.random() < 0.5,
        user=rng.choice([None, "user-1"]),
    )
    if request.tools and request.tool_choice is not None:
        request.parallel_tool_calls = rng.choice([None, False])
    if not anthropic and request.stream:
        request.meta["openai"] = {"include_usage": True}
    return request
