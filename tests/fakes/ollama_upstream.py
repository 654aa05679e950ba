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
count. ``latency``, ``fail_rate`` and ``seed`` act as in every fake (``fakes.base``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import (
    FakeUpstream,
    Recorded,
    fake_args,
    fake_vector,
    fault_helpers,
    json_response,
    ndjson,
    pick,
    split,
    tokens,
)

__all__ = ["Behaviour", "FakeOllama", "Recorded", "drop_mid_stream", "error", "fake_vector",
           "garbage", "hang_before_headers", "hang_mid_stream", "mid_stream_error", "reply",
           "slow"]


@dataclass
class Behaviour(base.Behaviour):
    """How to answer one chat request; build with the helper functions.

    ``error`` is the message of the HTTP error, or of the mid-stream error line.
    """

    thinking: str | None = None
    done_reason: str | None = None


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    thinking: str | None = None,
    done_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text=text, chunks=chunks, delay=delay, tool_calls=tool_calls,
                     thinking=thinking, done_reason=done_reason, usage=dict(usage or {}))


def error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> Behaviour:
    return Behaviour(status=status, error=message or f"Fake upstream error {status}",
                     headers=dict(headers or {}))


def mid_stream_error(after_chunks: int, message: str = "an error was encountered while "
                     "running the model: unexpected EOF") -> Behaviour:
    return Behaviour(error_after=after_chunks, error=message)


hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)


# ----------------------------------------------------------------------------- helpers

def _now() -> str:
    """RFC 3339 with nanoseconds, as Go's time.Time marshals."""
    now = datetime.now(UTC)
    nanos = f"{now.microsecond:06d}{secrets.randbelow(1000):03d}"
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + nanos + "Z"


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, obj, headers, charset="utf-8")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


# ----------------------------------------------------------------------------- the fake

class FakeOllama(FakeUpstream[Behaviour]):
    """In-process fake of Ollama's native API (see module docstring)."""

    behaviour = Behaviour
    key_in = ("bearer",)
    stream_type = "application/x-ndjson"
    stream_garbage = b"<html>502 Bad Gateway</html>\r\nnot json lines\n"
    respond_json = staticmethod(_json)

    def __init__(
        self,
        *,
        api_key: str | None = None,  # None: a local server, no auth
        models: Sequence[str] = ("llama3.2:latest", "qwen3:8b", "gpt-oss:20b"),
        thinking_models: Sequence[str] = ("qwen3:8b", "gpt-oss:20b"),
        **knobs: Any,  # chunks, delay, latency, fail_rate, seed: see fakes.base
    ) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.thinking_models = set(thinking_models)
        self.app.router.add_post("/api/chat", self._handle)
        self.app.router.add_get("/api/tags", self._tags)
        self.app.router.add_get("/api/version", self._version)
        self.app.router.add_post("/api/embed", self._embed)

    def _auth_missing(self) -> web.Response:
        return _error(401, "unauthorized")

    def _failure(self, status: int) -> Behaviour:
        return error(status, "llama runner process has terminated: exit status 2")

    def _resolve(self, name: str) -> str | None:
        full = name if ":" in name else f"{name}:latest"
        return full if full in self.models else None

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
                           "prompt_eval_count": sum(tokens(t) for t in texts)})

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
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
        if b.garbage is not None:
            return self._garbage(b, stream)
        if b.error is not None and not stream:
            return _error(500, b.error)
        lines = self._lines(body, b)
        if not stream:
            return await self._send_whole(request, b, orjson.dumps(self._merged(lines)))
        return await self._send_stream(request, b, [ndjson(line) for line in lines], {},
                                       lambda sent: ndjson({"error": b.error}))

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
            picked = pick(tools, n, {"name": "get_weather", "parameters": {}})
            calls = [{"name": t["name"], "arguments": fake_args(t.get("parameters"))}
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
                for p in split(thinking, k)]
        if text is not None:
            out += [{**head, "created_at": _now(), "message": {"role": "assistant", "content": p},
                     "done": False} for p in split(text, k)]
        if calls:
            out.append({**head, "created_at": _now(), "message": {
                "role": "assistant", "content": "",
                "tool_calls": [{"function": {"index": i, "name": c["name"],
                                             "arguments": c["arguments"]}}
                               for i, c in enumerate(calls)]}, "done": False})
        prompt = sum(tokens(str(m.get("content") or "")) + 4 for m in messages)
        evals = tokens((thinking or "") + (text or "")) + sum(
            tokens(orjson.dumps(c).decode()) for c in calls)
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
