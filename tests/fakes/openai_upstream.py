"""Fake OpenAI Chat Completions upstream for gateway tests.

Speaks the real wire format (JSON bodies, SSE streams, error bodies) of
``POST /v1/chat/completions`` and ``GET /v1/models``, checked against the
openai-python SDK types. Usage::

    fake = FakeOpenAI()
    fake.script += [error(429, headers={"Retry-After": "1"}), reply(text="hi", chunks=2)]
    server = await aiohttp_server(fake.app)
    client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-upstream-test")

``script`` is a queue: each chat request pops one ``Behaviour`` (an empty queue
means the default reply). Behaviour helpers, each for one request:

- ``reply(text=None, chunks=None, delay=None, tool_calls=None, finish_reason=None,
  reasoning=None, usage=None)``
  ``tool_calls``: ``N`` forces N parallel calls (to tools[i], cycling), or a list of
  ``{"name": str, "arguments": dict | str}``; ``0`` forbids tool calls. ``reasoning``:
  ``reasoning_content`` text before the answer, as DeepSeek / vLLM / OpenRouter-style
  compatible servers send it (streamed as ``reasoning_content`` deltas). ``usage``
  overrides fields of the ``usage`` object (e.g. ``{"prompt_tokens": 11}``).
- ``error(status, message=None, type=None, code=None, headers=None, param=None)``
- ``hang_before_headers(seconds)``
- ``hang_mid_stream(after_chunks, seconds)`` then the reply continues normally.
- ``drop_mid_stream(after_chunks)`` aborts the TCP connection.
- ``mid_stream_error(after_chunks, message=..., type="server_error", code=None)``
  writes ``data: {"error": {...}}`` and ends the body (no ``[DONE]``).
- ``garbage(body=None)`` 200 with an unparsable JSON body / non-SSE stream body.
- ``slow(delay_per_chunk)``

Knobs combine by building ``Behaviour(...)`` directly, e.g.
``Behaviour(text="abc", chunks=3, drop_after=2)``. ``error()`` defaults ``type`` from
the status (429 "requests", >=500 "server_error", else "invalid_request_error") and 429's
``code`` to "rate_limit_exceeded". ``after_chunks`` counts SSE events already written (the role chunk is the first,
``[DONE]`` the last). On non-stream requests hang/drop act after half the JSON
body is written and ``mid_stream_error`` becomes an HTTP 500.

Default reply: ``"Hello! You said: <last user text>"``; a tool call to the first
tool when ``tools`` is present and the last user message contains "weather".
The ``model`` is echoed as requested; only one choice is produced (``n`` ignored).

Constructor knobs that act on every chat request: ``latency`` seconds waited before
answering (scripted or not; a client disconnect during it counts in ``closed_streams``),
and ``fail_rate``: the probability that a request the script does not answer gets an
HTTP 500 or 503 in OpenAI's error shape instead of the default reply, drawn from
``random.Random(seed)`` so a seeded fake fails the same requests every run
(``injected_failures`` counts them). E.g. ``FakeOpenAI(latency=0.05, fail_rate=0.1, seed=7)``.

``POST /v1/embeddings`` answers in OpenAI's shape with deterministic vectors (see
``fake_vector``) for any model in ``models`` or ``EMBEDDING_MODELS``; it pops the same
``script``, honouring only ``error()`` behaviours.

``requests`` records every request (chat, embeddings and models). ``closed_streams`` counts chat
requests whose client disconnected before the response finished (also while hanging
before headers); ``stream_closed`` is set each time. Fake-initiated drops don't count.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_ALNUM = string.ascii_letters + string.digits
_FINGERPRINT = "fp_f4ke0pena1"
_INVALID = "invalid_request_error"
EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """The fakes' embedding of ``text``: derived from its length, so tests can predict it."""
    return [(len(text) + k) / 100 for k in range(dimensions)]


def _err(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


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
    finish_reason: str | None = None
    status: int = 200
    error: dict[str, Any] | None = None  # HTTP error body["error"], or mid-stream error
    headers: dict[str, str] = field(default_factory=dict)
    hang_before_headers: float = 0.0
    hang_after: int | None = None
    hang_seconds: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    garbage: bytes | None = None
    reasoning: str | None = None  # reasoning_content before the answer
    usage: dict[str, Any] = field(default_factory=dict)  # overrides of the usage object


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    reasoning: str | None = None,
    usage: dict[str, Any] | None = None,
) -> Behaviour:
    return Behaviour(text, chunks, delay, tool_calls, finish_reason, reasoning=reasoning,
                     usage=dict(usage or {}))


def error(
    status: int,
    message: str | None = None,
    type: str | None = None,  # noqa: A002 - mirrors the OpenAI field name
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Behaviour:
    if type is None:
        type = {429: "requests"}.get(status, "server_error" if status >= 500 else _INVALID)
    if code is None and status == 429:
        code = "rate_limit_exceeded"
    body = _err(message or f"Fake upstream error {status}", type, code, param)
    return Behaviour(status=status, error=body, headers=dict(headers or {}))


def hang_before_headers(seconds: float) -> Behaviour:
    return Behaviour(hang_before_headers=seconds)


def hang_mid_stream(after_chunks: int, seconds: float) -> Behaviour:
    return Behaviour(hang_after=after_chunks, hang_seconds=seconds)


def drop_mid_stream(after_chunks: int) -> Behaviour:
    return Behaviour(drop_after=after_chunks)


def mid_stream_error(
    after_chunks: int,
    message: str = "The server had an error while processing your request. Sorry about that!",
    type: str = "server_error",  # noqa: A002
    code: str | None = None,
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error=_err(message, type, code))


def garbage(body: bytes | None = None) -> Behaviour:
    return Behaviour(garbage=body or b"")


def slow(delay_per_chunk: float) -> Behaviour:
    return Behaviour(delay=delay_per_chunk)


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tokens(s: str) -> int:
    return max(1, (len(s) + 3) // 4)


def _split(s: str, n: int) -> list[str]:
    """Split ``s`` into ``min(n, len(s))`` contiguous non-empty pieces."""
    n = max(1, min(n, len(s)))
    return [s[i * len(s) // n : (i + 1) * len(s) // n] for i in range(n)] if s else [""]


def _fake_args(tool: dict[str, Any]) -> str:
    """Deterministic JSON arguments satisfying the tool's parameter schema."""
    props = (tool.get("function") or {}).get("parameters", {}).get("properties", {}) or {}
    by_type: dict[Any, Any] = {"number": 1, "integer": 1, "boolean": True}
    by_type |= {"array": [], "object": {}}
    args: dict[str, Any] = {}
    for name, schema in props.items():
        schema = schema if isinstance(schema, dict) else {}
        default = "Paris" if name in ("location", "city") else "test"
        args[name] = (schema.get("enum") or [by_type.get(schema.get("type"), default)])[0]
    return orjson.dumps(args or {"location": "Paris"}).decode()


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"x-request-id": f"req_{secrets.token_hex(16)}", "openai-processing-ms": "7"}
    return web.Response(
        status=status, body=obj if isinstance(obj, bytes) else orjson.dumps(obj),
        content_type="application/json", headers={**hdrs, **(headers or {})},
    )


def _oai_error(status: int, message: str, type_: str, code: str | None, param: str | None = None):
    return _json(status, {"error": _err(message, type_, code, param)})


class FakeOpenAI:
    """In-process fake of the OpenAI Chat Completions API (see module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = "sk-upstream-test",
        models: tuple[str, ...] | list[str] = ("gpt-4o-mini", "gpt-4o"),
        chunks: int = 4,
        delay: float = 0.0,
        obfuscation: bool = True,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate is a probability (0..1)")
        self.api_key = api_key
        self.models = list(models)
        self.chunks = chunks  # default content deltas per stream
        self.delay = delay  # default seconds between stream events
        self.obfuscation = obfuscation  # add the real API's "obfuscation" field to chunks
        self.latency = latency  # seconds before answering each chat request
        self.fail_rate = fail_rate  # share of unscripted chat requests answered 500/503
        self.rng = random.Random(seed)
        self.injected_failures = 0
        self.requests: list[Recorded] = []
        self.script: list[Behaviour] = []
        self.closed_streams = 0
        self.stream_closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/embeddings", self._embeddings)

    # ---- plumbing -------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        rec = Recorded(
            request.method, request.path, {k.lower(): v for k, v in request.headers.items()},
            parsed, raw,
        )
        self.requests.append(rec)
        return rec

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        auth = request.headers.get("Authorization", "")
        if not auth:
            msg = ("You didn't provide an API key. You need to provide your API key in an "
                   "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            return _oai_error(401, msg, _INVALID, None)
        if auth != f"Bearer {self.api_key}":
            key = auth.removeprefix("Bearer ").strip()
            masked = f"{key[:8]}{'*' * 10}{key[-4:]}" if len(key) > 12 else key
            msg = (f"Incorrect API key provided: {masked}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
            return _oai_error(401, msg, _INVALID, "invalid_api_key")
        return None

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, raising ConnectionResetError as soon as the client goes away."""
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

    # ---- handlers -------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                for m in self.models]
        return _json(200, {"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else Behaviour()
        if b.error is not None:
            return _json(b.status, {"error": b.error}, b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json if isinstance(rec.json, dict) else {}
        model, texts = body.get("model"), body.get("input")
        if model not in (*self.models, *EMBEDDING_MODELS):
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return _oai_error(404, msg, _INVALID, "model_not_found")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(
                isinstance(t, str) and t for t in texts):
            return _oai_error(400, "'$.input' is invalid. Please check the API reference: "
                              "https://platform.openai.com/docs/api-reference.", _INVALID, None)
        dims = body.get("dimensions") or 8
        tokens = sum(_tokens(t) for t in texts)
        return _json(200, {
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": fake_vector(t, dims)}
                     for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else self._unscripted()
        try:
            if self.latency:
                await self._sleep(request, self.latency)
            return await self._serve(request, rec, b)
        except ConnectionResetError:
            self._client_gone()
            return web.Response(status=499)  # never reaches the (gone) client
        except asyncio.CancelledError:
            self._client_gone()
            raise

    def _unscripted(self) -> Behaviour:
        """The default reply, or (``fail_rate`` of the time) a random 500 or 503."""
        if not self.fail_rate or self.rng.random() >= self.fail_rate:
            return Behaviour()
        self.injected_failures += 1
        if self.rng.random() < 0.5:
            return error(500, "The server had an error while processing your request. "
                              "Sorry about that!")
        return error(503, "The server is overloaded or not ready yet.")

    def _client_gone(self) -> None:
        self.closed_streams += 1
        self.stream_closed.set()

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if b.hang_before_headers:
            await self._sleep(request, b.hang_before_headers)
        if b.error is not None and b.error_after is None:
            return _json(b.status, {"error": b.error}, b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json
        if not isinstance(body, dict):
            msg = ("We could not parse the JSON body of your request. (HINT: This likely means "
                   "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                   "payload, but what was sent was not valid JSON.)")
            return _oai_error(400, msg, _INVALID, None)
        for name in ("model", "messages"):
            if name not in body:
                msg = f"Missing required parameter: '{name}'."
                return _oai_error(400, msg, _INVALID, "missing_required_parameter", name)
        if (model := body["model"]) not in self.models:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return _oai_error(404, msg, _INVALID, "model_not_found")
        stream = bool(body.get("stream"))
        if b.garbage is not None and stream:
            junk = b.garbage or b"<html>502 Bad Gateway</html>\r\nnot an event stream {{\x00\n\n"
            return web.Response(body=junk, headers={"Content-Type": "text/event-stream"})
        if b.garbage is not None:
            return _json(200, b.garbage or b"<html><body>upstream says hi</body></html> {not json")
        if b.error is not None and not stream:  # mid_stream_error on a plain request
            return _json(500, {"error": b.error})
        return await (self._stream if stream else self._complete)(request, body, b)

    # ---- reply construction ---------------------------------------------------------
    def _plan(self, body: dict[str, Any], b: Behaviour) -> tuple[str | None, list[dict[str, str]]]:
        """Decide the reply: (text, tool calls as [{id, name, arguments}])."""
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        n = b.tool_calls
        if n is None:
            said = _text_of(last.get("content")).lower()
            wants = last.get("role") == "user" and "weather" in said
            n = 1 if tools and wants else 0
        if isinstance(n, list):
            calls = [
                {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                 else orjson.dumps(c["arguments"]).decode()}
                for c in n
            ]
        else:
            fallback = {"function": {"name": "get_weather"}}
            picked = [(tools or [fallback])[i % max(1, len(tools))] for i in range(n)]
            calls = [{"name": t["function"]["name"], "arguments": _fake_args(t)} for t in picked]
        if calls:
            return None, [{"id": f"call_{_rand(24)}", **c} for c in calls]
        users = [m for m in messages if m.get("role") == "user"]
        said = _text_of(users[-1].get("content")) if users else ""
        return (b.text if b.text is not None else f"Hello! You said: {said}"), []

    def _usage(self, body: dict[str, Any], text: str | None, calls: list[dict[str, str]]):
        prompt = sum(_tokens(_text_of(m.get("content"))) + 3 for m in body["messages"]) + 3
        done = _tokens(text or "") + sum(_tokens(c["name"] + c["arguments"]) for c in calls)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": done,
            "total_tokens": prompt + done,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }

    async def _complete(self, request: web.Request, body: dict[str, Any], b: Behaviour):
        text, calls = self._plan(body, b)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if b.reasoning is not None:
            message["reasoning_content"] = b.reasoning
        if calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ]
        message["annotations"] = []
        payload = orjson.dumps({
            "id": f"chatcmpl-{_rand(29)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{
                "index": 0, "message": message, "logprobs": None,
                "finish_reason": b.finish_reason or ("tool_calls" if calls else "stop"),
            }],
            "usage": {**self._usage(body, text, calls), **b.usage},
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        })
        delay = b.delay if b.delay is not None else self.delay
        if delay:
            await self._sleep(request, delay * (b.chunks or self.chunks))
        if b.hang_after is None and b.drop_after is None:
            return _json(200, payload)
        resp = web.StreamResponse(headers={"x-request-id": f"req_{secrets.token_hex(16)}"})
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

    def _chunks(self, body: dict[str, Any], b: Behaviour) -> list[bytes]:
        """All SSE events of the stream, ``[DONE]`` included."""
        text, calls = self._plan(body, b)
        opts = body.get("stream_options") or {}
        usage_on = bool(opts.get("include_usage"))
        obfuscate = self.obfuscation and opts.get("include_obfuscation", True) is not False
        base = {
            "id": f"chatcmpl-{_rand(29)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body["model"],
            "service_tier": "default", "system_fingerprint": _FINGERPRINT,
        }

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None):
            ev: dict[str, Any] = dict(base)
            ev["choices"] = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]
            if usage_on:
                ev["usage"] = usage
            if obfuscate:
                ev["obfuscation"] = _rand(secrets.randbelow(12) + 1)
            return b"data: " + orjson.dumps(ev) + b"\n\n"

        n = b.chunks or self.chunks
        out: list[bytes] = []
        if b.reasoning is not None:
            out.append(chunk({"role": "assistant", "content": None, "reasoning_content": ""}))
            out += [chunk({"reasoning_content": piece}) for piece in _split(b.reasoning, n)]
        if calls:
            for i, c in enumerate(calls):
                head: dict[str, Any] = {"index": i, "id": c["id"], "type": "function",
                                        "function": {"name": c["name"], "arguments": ""}}
                delta: dict[str, Any] = {"tool_calls": [head]}
                if i == 0:
                    delta = {"role": "assistant", "content": None, "tool_calls": [head],
                             "refusal": None}
                out.append(chunk(delta))
                for piece in _split(c["arguments"], max(3, n)):
                    part = {"index": i, "function": {"arguments": piece}}
                    out.append(chunk({"tool_calls": [part]}))
        else:
            out.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            out += [chunk({"content": piece}) for piece in _split(text or "", n)]
        out.append(chunk({}, b.finish_reason or ("tool_calls" if calls else "stop")))
        if usage_on:
            out.append(chunk(None, usage={**self._usage(body, text, calls), **b.usage}))
        return out + [b"data: [DONE]\n\n"]

    async def _stream(self, request: web.Request, body: dict[str, Any], b: Behaviour):
        events = self._chunks(body, b)
        delay = b.delay if b.delay is not None else self.delay
        headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                   "x-request-id": f"req_{secrets.token_hex(16)}"}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for sent, event in enumerate(events):
            if b.hang_after == sent:
                await self._sleep(request, b.hang_seconds)
            if b.drop_after == sent:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if b.error_after == sent:
                await resp.write(b"data: " + orjson.dumps({"error": b.error}) + b"\n\n")
                break
            await self._sleep(request, delay if sent else 0.0)
            await resp.write(event)
        await resp.write_eof()
        return resp
