"""Fake Ollama native API upstream for gateway tests.

Speaks the real wire format of ``POST /api/chat`` (one JSON object, or an
``application/x-ndjson`` stream: one object per line, ``"done": false`` chunks
and a last ``"done": true`` one carrying ``done_reason`` and the eval counts)
and ``GET /api/tags``, checked against the ollama-python SDK. Usage::

    fake = FakeOllama()
    fake.script += [error(500, "llama runner process has terminated"), reply(text="hi")]
    server = await aiohttp_server(fake.app)
    client = ollama.AsyncClient(host=str(server.make_url("")))

``script`` is a queue: each chat request pops one ``Behaviour`` (an empty queue means
the default reply). Behaviour helpers, each for one request:

- ``reply(text=None, chunks=None, delay=None, tool_calls=None, thinking=None,
  done_reason=None, usage=None)``: ``tool_calls``: ``N`` forces N calls (to tools[i],
  cycling), or a list of ``{"name", "arguments": dict}``; ``0`` forbids them. Calls come
  whole in one ``message.tool_calls`` chunk, arguments as objects. ``thinking``: the
  ``message.thinking`` text (by default present when the request sets ``think``).
  ``usage`` overrides the final counts (``prompt_eval_count``, ``eval_count``).
- ``error(status, message=None)``: ``{"error": "..."}``.
- ``hang_before_headers(seconds)``, ``hang_mid_stream(after_chunks, seconds)``,
  ``drop_mid_stream(after_chunks)``, ``mid_stream_error(after_chunks, message=...)`` (a
  ``{"error": ...}`` line, then the body ends), ``garbage(body=None)``, ``slow(delay)``.

Like the real server the fake refuses, with ``{"error": ...}``: a missing ``model``
(400), an unknown one (404, ``name`` without a tag means ``:latest``), message
``content`` that is not a string (OpenAI-style part lists), tool call ``arguments``
that are a JSON string instead of an object, ``think`` on a model that cannot think,
and, when built with ``api_key``, a missing or wrong Bearer key (401). ``stream``
defaults to true, as in Ollama.

``POST /api/embed`` (``{"model", "input": str | [str]}``) answers
``{"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}`` with
deterministic vectors (``fake_vector``: derived from the text's length); it pops the same
``script``, honouring only ``error()`` behaviours.

Default reply: ``"Hello! You said: <last user text>"``; a call to the first tool when
``tools`` is present and the last user text contains "weather". ``requests`` records
every request; ``closed_streams`` counts chat requests whose client went away before
the answer finished (``stream_closed`` is set each time); fake-initiated drops don't
count.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Recorded:
    """One request seen by the fake (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes


@dataclass
class Behaviour:
    """How to answer one chat request; build with the helper functions."""

    text: str | None = None
    chunks: int | None = None
    delay: float | None = None
    tool_calls: int | list[dict[str, Any]] | None = None
    thinking: str | None = None
    done_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    status: int = 200
    error: str | None = None  # HTTP error message, or the mid-stream error line's
    headers: dict[str, str] = field(default_factory=dict)
    hang_before_headers: float = 0.0
    hang_after: int | None = None
    hang_seconds: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    garbage: bytes | None = None


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    thinking: str | None = None,
    done_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text, chunks, delay, tool_calls, thinking, done_reason, dict(usage or {}))


def error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> Behaviour:
    return Behaviour(status=status, error=message or f"Fake upstream error {status}",
                     headers=dict(headers or {}))


def hang_before_headers(seconds: float) -> Behaviour:
    return Behaviour(hang_before_headers=seconds)


def hang_mid_stream(after_chunks: int, seconds: float) -> Behaviour:
    return Behaviour(hang_after=after_chunks, hang_seconds=seconds)


def drop_mid_stream(after_chunks: int) -> Behaviour:
    return Behaviour(drop_after=after_chunks)


def mid_stream_error(after_chunks: int, message: str = "an error was encountered while "
                     "running the model: unexpected EOF") -> Behaviour:
    return Behaviour(error_after=after_chunks, error=message)


def garbage(body: bytes | None = None) -> Behaviour:
    return Behaviour(garbage=body or b"")


def slow(delay_per_chunk: float) -> Behaviour:
    return Behaviour(delay=delay_per_chunk)


# ----------------------------------------------------------------------------- helpers

def _tokens(s: str) -> int:
    return max(1, (len(s) + 3) // 4)


def _split(s: str, n: int) -> list[str]:
    n = max(1, min(n, len(s)))
    return [s[i * len(s) // n : (i + 1) * len(s) // n] for i in range(n)] if s else [""]


def _fake_args(schema: Any) -> dict[str, Any]:
    props = (schema or {}).get("properties", {}) if isinstance(schema, dict) else {}
    by_type: dict[Any, Any] = {"number": 1, "integer": 1, "boolean": True, "array": [],
                               "object": {}}
    args: dict[str, Any] = {}
    for name, prop in (props or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        default = "Paris" if name in ("location", "city") else "test"
        args[name] = (prop.get("enum") or [by_type.get(prop.get("type"), default)])[0]
    return args or {"location": "Paris"}


def _now() -> str:
    """RFC 3339 with nanoseconds, as Go's time.Time marshals."""
    now = datetime.now(UTC)
    nanos = f"{now.microsecond:06d}{secrets.randbelow(1000):03d}"
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + nanos + "Z"


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=obj if isinstance(obj, bytes) else orjson.dumps(obj),
                        content_type="application/json", charset="utf-8", headers=headers)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """The fake's embedding of ``text`` (the same as the OpenAI fake's)."""
    return [(len(text) + k) / 100 for k in range(dimensions)]


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


# ----------------------------------------------------------------------------- the fake

class FakeOllama:
    """In-process fake of Ollama's native API (see module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: tuple[str, ...] | list[str] = ("llama3.2:latest", "qwen3:8b", "gpt-oss:20b"),
        thinking_models: tuple[str, ...] | list[str] = ("qwen3:8b", "gpt-oss:20b"),
        chunks: int = 4,
        delay: float = 0.0,
    ) -> None:
        self.api_key = api_key  # None: a local server, no auth
        self.models = list(models)
        self.thinking_models = set(thinking_models)
        self.chunks = chunks
        self.delay = delay
        self.base_url = ""  # for tests: set it once the app is served
        self.requests: list[Recorded] = []
        self.script: list[Behaviour] = []
        self.closed_streams = 0
        self.stream_closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/api/chat", self._chat)
        self.app.router.add_get("/api/tags", self._tags)
        self.app.router.add_get("/api/version", self._version)
        self.app.router.add_post("/api/embed", self._embed)

    # ---- plumbing -------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        rec = Recorded(request.method, request.path,
                       {k.lower(): v for k, v in request.headers.items()}, parsed, raw)
        self.requests.append(rec)
        return rec

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "unauthorized")
        return None

    def _resolve(self, name: str) -> str | None:
        full = name if ":" in name else f"{name}:latest"
        return full if full in self.models else None

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            left = end - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.01))

    def _client_gone(self) -> None:
        self.closed_streams += 1
        self.stream_closed.set()

    # ---- handlers -------------------------------------------------------------------
    async def _version(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return _json(200, {"version": "0.12.6"})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        models = [{
            "name": m, "model": m, "modified_at": "2025-10-01T12:00:00.123456789Z",
            "size": 2019393189, "digest": secrets.token_hex(32),
            "details": {"parent_model": "", "format": "gguf", "family": m.split(":")[0],
                        "families": [m.split(":")[0]], "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M"},
        } for m in self.models]
        return _json(200, {"models": models})

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else Behaviour()
        if b.error is not None:
            return _json(b.status, {"error": b.error}, b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json if isinstance(rec.json, dict) else {}
        if not body.get("model"):
            return _error(400, "model is required")
        model = self._resolve(body["model"])
        if model is None:
            return _error(404, f"model \"{body['model']}\" not found, try pulling it first")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid input type")
        dims = body.get("dimensions") or 8
        return _json(200, {"model": model, "embeddings": [fake_vector(t, dims) for t in texts],
                           "total_duration": 14_143_917, "load_duration": 1_019_500,
                           "prompt_eval_count": sum(_tokens(t) for t in texts)})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else Behaviour()
        try:
            return await self._serve(request, rec, b)
        except ConnectionResetError:
            self._client_gone()
            return web.Response(status=499)
        except asyncio.CancelledError:
            self._client_gone()
            raise

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if b.hang_before_headers:
            await self._sleep(request, b.hang_before_headers)
        if b.error is not None and b.error_after is None:
            return _json(b.status, {"error": b.error}, b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json
        if not isinstance(body, dict):
            return _error(400, "invalid character '<' looking for beginning of value")
        if not body.get("model"):
            return _error(400, "model is required")
        model = self._resolve(body["model"])
        if model is None:
            return _error(404, f"model \"{body['model']}\" not found, try pulling it first")
        if (problem := _check_messages(body.get("messages"))) is not None:
            return _error(400, problem)
        if body.get("think") and model not in self.thinking_models:
            return _error(400, f"\"{body['model']}\" does not support thinking")
        stream = body.get("stream", True) is not False
        if b.garbage is not None and stream:
            junk = b.garbage or b"<html>502 Bad Gateway</html>\r\nnot json lines\n"
            return web.Response(body=junk, headers={"Content-Type": "application/x-ndjson"})
        if b.garbage is not None:
            return _json(200, b.garbage or b"<html><body>upstream says hi</body></html> {not json")
        if b.error is not None and not stream:
            return _error(500, b.error)
        lines = self._lines(body, b)
        if not stream:
            return await self._complete(request, self._merged(lines), b)
        return await self._stream(request, lines, b)

    # ---- reply construction ---------------------------------------------------------
    def _lines(self, body: dict[str, Any], b: Behaviour) -> list[dict[str, Any]]:
        """Every stream line, the final ``done`` one included."""
        messages = body.get("messages") or []
        tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
        n = b.tool_calls
        if n is None:
            last = messages[-1] if messages else {}
            wants = last.get("role") == "user" and "weather" in str(last.get("content", "")).lower()
            n = 1 if tools and wants else 0
        if isinstance(n, list):
            calls = [{"name": c["name"], "arguments": c["arguments"]} for c in n]
        else:
            fallback = {"name": "get_weather", "parameters": {}}
            picked = [(tools or [fallback])[i % max(1, len(tools))] for i in range(n)]
            calls = [{"name": t["name"], "arguments": _fake_args(t.get("parameters"))}
                     for t in picked]
        thinking = b.thinking
        if thinking is None and body.get("think"):
            thinking = "Okay, the user wants a short answer."
        users = [m for m in messages if m.get("role") == "user"]
        said = str(users[-1].get("content") or "") if users else ""
        text = b.text if b.text is not None else (None if calls else f"Hello! You said: {said}")
        k = b.chunks or self.chunks
        head = {"model": body["model"]}
        out: list[dict[str, Any]] = []
        if thinking is not None:
            out += [{**head, "created_at": _now(), "message": {
                "role": "assistant", "content": "", "thinking": p}, "done": False}
                for p in _split(thinking, k)]
        if text is not None:
            out += [{**head, "created_at": _now(), "message": {"role": "assistant", "content": p},
                     "done": False} for p in _split(text, k)]
        if calls:
            out.append({**head, "created_at": _now(), "message": {
                "role": "assistant", "content": "",
                "tool_calls": [{"function": {"index": i, "name": c["name"],
                                             "arguments": c["arguments"]}}
                               for i, c in enumerate(calls)]}, "done": False})
        prompt = sum(_tokens(str(m.get("content") or "")) + 4 for m in messages)
        evals = _tokens((thinking or "") + (text or "")) + sum(
            _tokens(orjson.dumps(c).decode()) for c in calls)
        final = {**head, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": b.done_reason or "stop",
                 "total_duration": 1_532_000_000, "load_duration": 21_000_000,
                 "prompt_eval_count": prompt, "prompt_eval_duration": 112_000_000,
                 "eval_count": evals, "eval_duration": 1_380_000_000}
        final.update(b.usage)
        return [*out, final]

    def _merged(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-stream answer: the final line with the whole message."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        for line in lines[:-1]:
            part = line["message"]
            message["content"] += part.get("content", "")
            if part.get("thinking"):
                message["thinking"] = message.get("thinking", "") + part["thinking"]
            if part.get("tool_calls"):
                message["tool_calls"] = part["tool_calls"]
        return {**lines[-1], "message": message}

    async def _complete(self, request: web.Request, doc: dict[str, Any], b: Behaviour):
        payload = orjson.dumps(doc)
        delay = b.delay if b.delay is not None else self.delay
        if delay:
            await self._sleep(request, delay * (b.chunks or self.chunks))
        if b.hang_after is None and b.drop_after is None:
            return _json(200, payload)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if b.drop_after is not None:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await self._sleep(request, b.hang_seconds)
        await resp.write(payload[len(payload) // 2 :])
        await resp.write_eof()
        return resp

    async def _stream(self, request: web.Request, lines: list[dict[str, Any]], b: Behaviour):
        delay = b.delay if b.delay is not None else self.delay
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for sent, line in enumerate(lines):
            if b.hang_after == sent:
                await self._sleep(request, b.hang_seconds)
            if b.drop_after == sent:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if b.error_after == sent:
                await resp.write(_line({"error": b.error}))
                break
            await self._sleep(request, delay if sent else 0.0)
            await resp.write(_line(line))
        await resp.write_eof()
        return resp


def _check_messages(messages: Any) -> str | None:
    """The 400 message Ollama (Go's JSON decoder) gives for ``messages``, or None."""
    if messages is None:
        return None
    if not isinstance(messages, list):
        return "json: cannot unmarshal object into Go struct field ChatRequest.messages of " \
               "type []api.Message"
    for msg in messages:
        if not isinstance(msg, dict):
            return "json: cannot unmarshal string into Go struct field ChatRequest.messages of " \
                   "type api.Message"
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            kind = "array" if isinstance(content, list) else "object"
            return (f"json: cannot unmarshal {kind} into Go struct field Message.messages.content "
                    "of type string")
        for call in msg.get("tool_calls") or []:
            args = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if args is not None and not isinstance(args, dict):
                kind = "string" if isinstance(args, str) else "array"
                return (f"json: cannot unmarshal {kind} into Go struct field ToolCallFunction."
                        "messages.tool_calls.function.arguments of type "
                        "api.ToolCallFunctionArguments")
        images = msg.get("images")
        if images is not None and not (isinstance(images, list)
                                       and all(isinstance(i, str) for i in images)):
            return "illegal base64 data at input byte 0"
    return None
