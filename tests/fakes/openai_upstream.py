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
``code`` to "rate_limit_exceeded". ``after_chunks`` counts SSE events already written
(the role chunk is the first, ``[DONE]`` the last). On non-stream requests hang/drop act
after half the JSON body is written and ``mid_stream_error`` becomes an HTTP 500.

Default reply: ``"Hello! You said: <last user text>"``; a tool call to the first
tool when ``tools`` is present and the last user message contains "weather".
The ``model`` is echoed as requested; only one choice is produced (``n`` ignored).

Constructor knobs that act on every chat request: ``latency`` seconds waited before
answering (scripted or not; a client disconnect during it counts in ``closed_streams``),
and ``fail_rate``: the probability that a request the script does not answer gets an
HTTP 500 or 503 in OpenAI's error shape instead of the default reply, drawn from
``random.Random(seed)`` so a seeded fake fails the same requests every run
(``injected_failures`` counts them). E.g. ``FakeOpenAI(latency=0.05, fail_rate=0.1, seed=7)``.
The faults, ``requests`` and ``closed_streams`` work as in every fake (``fakes.base``).

``POST /v1/embeddings`` answers in OpenAI's shape with deterministic vectors (see
``fake_vector``) for any model in ``models`` or ``EMBEDDING_MODELS``; it pops the same
``script``, honouring only ``error()`` behaviours.

``POST /v1/images/generations`` answers in OpenAI's images shape for ``IMAGE_MODELS``
(``fake_image``: predictable bytes): DALL-E 3 makes one image a request (``n`` > 1 is
its 400), gives a ``revised_prompt`` and answers a URL unless ``response_format`` is
``b64_json``; gpt-image-1 always answers ``b64_json`` with token ``usage`` (1056 output
tokens an image) and refuses ``response_format`` (400 "Unknown parameter"). It pops
the same ``script``, honouring ``error()`` and ``hang_before_headers()``.

The audio API (``/v1/audio/transcriptions``, ``/translations``, ``/speech``) is
``fakes.openai_audio``'s; it pops the same ``script``.

``requests`` records every request (chat, embeddings, images, audio and models).
``closed_streams`` counts chat and image requests whose client disconnected before the
response finished (also while hanging before headers); ``stream_closed`` is set each time.
Fake-initiated drops don't count.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from fakes import base
from fakes.base import (
    FakeUpstream,
    Recorded,
    fake_args,
    fake_image,
    fake_vector,
    fault_helpers,
    json_response,
    pick,
    rand,
    split,
    sse,
    tokens,
)
from fakes.openai_audio import OpenAIAudio

__all__ = ["EMBEDDING_MODELS", "IMAGE_MODELS", "Behaviour", "FakeOpenAI", "OpenAIFake",
           "Recorded", "drop_mid_stream", "error", "error_body", "fake_image", "fake_vector",
           "garbage", "hang_before_headers", "hang_mid_stream", "mid_stream_error", "reply",
           "slow"]

_FINGERPRINT = "fp_f4ke0pena1"
_INVALID = "invalid_request_error"
_SORRY = "The server had an error while processing your request. Sorry about that!"
EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")
IMAGE_MODELS = ("dall-e-3", "gpt-image-1")
#: gpt-image-1's output tokens for one 1024x1024 image at medium quality
IMAGE_TOKENS = 1056


def _err(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


@dataclass
class Behaviour(base.Behaviour):
    """How to answer one chat request; build with the helper functions."""

    finish_reason: str | None = None
    reasoning: str | None = None  # reasoning_content before the answer


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    reasoning: str | None = None,
    usage: dict[str, Any] | None = None,
) -> Behaviour:
    return Behaviour(text=text, chunks=chunks, delay=delay, tool_calls=tool_calls,
                     finish_reason=finish_reason, reasoning=reasoning, usage=dict(usage or {}))


def error_body(
    status: int,
    message: str | None = None,
    type: str | None = None,  # mirrors the OpenAI field name
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object; ``type`` and 429's ``code`` default from the status."""
    if type is None:
        type = {429: "requests"}.get(status, "server_error" if status >= 500 else _INVALID)
    if code is None and status == 429:
        code = "rate_limit_exceeded"
    return _err(message or f"Fake upstream error {status}", type, code, param)


def error(
    status: int,
    message: str | None = None,
    type: str | None = None,  # mirrors the OpenAI field name
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Behaviour:
    return Behaviour(status=status, error=error_body(status, message, type, code, param),
                     headers=dict(headers or {}))


def mid_stream_error(
    after_chunks: int,
    message: str = _SORRY,
    type: str = "server_error",
    code: str | None = None,
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error=_err(message, type, code))


hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def openai_json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"x-request-id": f"req_{secrets.token_hex(16)}", "openai-processing-ms": "7"}
    return json_response(status, obj, {**hdrs, **(headers or {})})


def _oai_error(status: int, message: str, type_: str, code: str | None, param: str | None = None):
    return openai_json(status, {"error": _err(message, type_, code, param)})


B = TypeVar("B", bound=base.Behaviour)


class OpenAIFake(FakeUpstream[B]):
    """What OpenAI's APIs share: Bearer keys, their 401s and 5xx, ``GET /v1/models``."""

    key_in = ("bearer",)
    respond_json = staticmethod(openai_json)

    def _auth_missing(self) -> web.Response:
        return _oai_error(401, "You didn't provide an API key. You need to provide your API key "
                          "in an Authorization header using Bearer auth (i.e. Authorization: "
                          "Bearer YOUR_KEY).", _INVALID, None)

    def _auth_wrong(self, key: str) -> web.Response:
        key = key.strip()
        masked = f"{key[:8]}{'*' * 10}{key[-4:]}" if len(key) > 12 else key
        return _oai_error(401, f"Incorrect API key provided: {masked}. You can find your API key "
                          "at https://platform.openai.com/account/api-keys.", _INVALID,
                          "invalid_api_key")

    def _failure(self, status: int) -> B:
        message = _SORRY if status == 500 else "The server is overloaded or not ready yet."
        return self.behaviour(status=status, error=error_body(status, message))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                for m in self.models]
        return openai_json(200, {"object": "list", "data": data})


class FakeOpenAI(OpenAIFake[Behaviour], OpenAIAudio):
    """In-process fake of the OpenAI Chat Completions API (see module docstring), with
    embeddings and the audio API (``fakes.openai_audio``)."""

    behaviour = Behaviour

    def __init__(
        self,
        *,
        api_key: str | None = "sk-upstream-test",
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        obfuscation: bool = True,
        **knobs: Any,  # chunks, delay, latency, fail_rate, seed: see fakes.base
    ) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.obfuscation = obfuscation  # add the real API's "obfuscation" field to chunks
        self.app.router.add_post("/v1/chat/completions", self._handle)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/embeddings", self._embeddings)
        self.app.router.add_post("/v1/images/generations", self._images)
        self._audio_routes()

    # ---- handlers -------------------------------------------------------------------
    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else Behaviour()
        if b.error is not None:
            return openai_json(b.status, {"error": b.error}, b.headers)
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
        used = sum(tokens(t) for t in texts)
        return openai_json(200, {
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": fake_vector(t, dims)}
                     for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": used, "total_tokens": used, **(b.usage or {})}})

    async def _images(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b = self.script.pop(0) if self.script else Behaviour()
        try:
            return await self._image_answer(request, rec, b)
        except ConnectionResetError:
            self._client_gone()
            return web.Response(status=499)  # never reaches the (gone) client
        except asyncio.CancelledError:
            self._client_gone()
            raise

    async def _image_answer(self, request: web.Request, rec: Recorded,
                            b: Behaviour) -> web.StreamResponse:
        if b.hang_before_headers:
            await self._sleep(request, b.hang_before_headers)
        if b.error is not None:
            return openai_json(b.status, {"error": b.error}, b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json if isinstance(rec.json, dict) else {}
        model, prompt, n = body.get("model"), body.get("prompt"), body.get("n", 1)
        if model not in IMAGE_MODELS:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return _oai_error(404, msg, _INVALID, "model_not_found")
        if not isinstance(prompt, str) or not prompt:
            return _oai_error(400, "Missing required parameter: 'prompt'.", _INVALID,
                              "missing_required_parameter", "prompt")
        gpt_image = model.startswith("gpt-image")
        if gpt_image and "response_format" in body:
            return _oai_error(400, "Unknown parameter: 'response_format'.", _INVALID,
                              "unknown_parameter", "response_format")
        if model == "dall-e-3" and n != 1:
            return _oai_error(400, "Invalid 'n': integer above maximum value. Expected a value "
                              "<= 1, but got 2 instead." if n == 2 else "Invalid 'n'.",
                              _INVALID, "integer_above_max_value", "n")
        urls = not gpt_image and body.get("response_format", "url") == "url"
        data = []
        for i in range(n):
            item: dict[str, Any] = ({"url": f"https://images.fake.openai/{rand(12)}-{i}.png"}
                                    if urls else {"b64_json": fake_image(prompt, i)})
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed picture of {prompt}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt_image:
            used = tokens(prompt)
            answer.update(background="opaque", output_format="png", quality="medium",
                          size=body.get("size", "1024x1024"), usage={
                              "input_tokens": used,
                              "input_tokens_details": {"text_tokens": used, "image_tokens": 0},
                              "output_tokens": IMAGE_TOKENS * n,
                              "total_tokens": used + IMAGE_TOKENS * n, **(b.usage or {})})
        return openai_json(200, answer)

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
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
        if b.garbage is not None:
            return self._garbage(b, stream)
        if b.error is not None and not stream:  # mid_stream_error on a plain request
            return openai_json(500, {"error": b.error})
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
            picked = pick(tools, n, {"function": {"name": "get_weather"}})
            calls = [{"name": t["function"]["name"], "arguments": orjson.dumps(fake_args(
                (t.get("function") or {}).get("parameters"))).decode()} for t in picked]
        if calls:
            return None, [{"id": f"call_{rand(24)}", **c} for c in calls]
        users = [m for m in messages if m.get("role") == "user"]
        said = _text_of(users[-1].get("content")) if users else ""
        return (b.text if b.text is not None else f"Hello! You said: {said}"), []

    def _usage(self, body: dict[str, Any], text: str | None, calls: list[dict[str, str]]):
        prompt = sum(tokens(_text_of(m.get("content"))) + 3 for m in body["messages"]) + 3
        done = tokens(text or "") + sum(tokens(c["name"] + c["arguments"]) for c in calls)
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
            "id": f"chatcmpl-{rand(29)}",
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
        return await self._send_whole(request, b, payload)

    def _chunks(self, body: dict[str, Any], b: Behaviour) -> list[bytes]:
        """All SSE events of the stream, ``[DONE]`` included."""
        text, calls = self._plan(body, b)
        opts = body.get("stream_options") or {}
        usage_on = bool(opts.get("include_usage"))
        obfuscate = self.obfuscation and opts.get("include_obfuscation", True) is not False
        common = {
            "id": f"chatcmpl-{rand(29)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body["model"],
            "service_tier": "default", "system_fingerprint": _FINGERPRINT,
        }

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None):
            ev: dict[str, Any] = dict(common)
            ev["choices"] = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]
            if usage_on:
                ev["usage"] = usage
            if obfuscate:
                ev["obfuscation"] = rand(secrets.randbelow(12) + 1)
            return sse(ev)

        n = b.chunks or self.chunks
        out: list[bytes] = []
        if b.reasoning is not None:
            out.append(chunk({"role": "assistant", "content": None, "reasoning_content": ""}))
            out += [chunk({"reasoning_content": piece}) for piece in split(b.reasoning, n)]
        if calls:
            for i, c in enumerate(calls):
                head: dict[str, Any] = {"index": i, "id": c["id"], "type": "function",
                                        "function": {"name": c["name"], "arguments": ""}}
                delta: dict[str, Any] = {"tool_calls": [head]}
                if i == 0:
                    delta = {"role": "assistant", "content": None, "tool_calls": [head],
                             "refusal": None}
                out.append(chunk(delta))
                for piece in split(c["arguments"], max(3, n)):
                    part = {"index": i, "function": {"arguments": piece}}
                    out.append(chunk({"tool_calls": [part]}))
        else:
            out.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            out += [chunk({"content": piece}) for piece in split(text or "", n)]
        out.append(chunk({}, b.finish_reason or ("tool_calls" if calls else "stop")))
        if usage_on:
            out.append(chunk(None, usage={**self._usage(body, text, calls), **b.usage}))
        return [*out, b"data: [DONE]\n\n"]

    async def _stream(self, request: web.Request, body: dict[str, Any], b: Behaviour):
        headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                   "x-request-id": f"req_{secrets.token_hex(16)}"}
        return await self._send_stream(request, b, self._chunks(body, b), headers,
                                       lambda sent: sse({"error": b.error}))


def direct_provider(http: Any, base_url: str, timeouts: Any) -> Any:
    """An ``OpenAIProvider`` for one connection to ``base_url``, called directly (no
    gateway in front): for tests of the provider's own network layer."""
    from omniroute.providers.base import ProviderContext
    from omniroute.providers.openai import OpenAIProvider
    from omniroute.storage.store import Connection

    settings, creds = OpenAIProvider.configure({"base_url": base_url}, {}, None)
    conn = Connection("conn_1", "openai", "fake", "f", settings, creds)
    return OpenAIProvider(conn, ProviderContext(http, timeouts, "omniroute-test"))
