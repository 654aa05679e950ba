"""Fake OpenAI Responses API upstream for gateway tests.

Speaks the real wire format of ``POST /v1/responses`` (a ``response`` object, or
SSE with named events: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.reasoning_summary_part.added`` /
``_text.delta`` / ``_text.done`` / ``_part.done``, ``response.content_part.added``,
``response.output_text.delta`` / ``.done``, ``response.content_part.done``,
``response.function_call_arguments.delta`` / ``.done``, ``response.output_item.done``,
``response.completed``; or ``error`` / ``response.failed``) and ``GET /v1/models``,
checked against the openai-python SDK. Usage::

    fake = FakeResponses()
    fake.script += [error(429, headers={"retry-after": "1"}), reply(text="hi", chunks=2)]
    server = await aiohttp_server(fake.app)
    client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-upstream-test")

``script`` is a queue: each responses request pops one ``Behaviour`` (an empty queue
means the default reply). Behaviour helpers, each for one request:

- ``reply(text=None, chunks=None, delay=None, tool_calls=None, reasoning=None,
  status=None, usage=None)``: ``tool_calls``: ``N`` forces N ``function_call`` items
  (to tools[i], cycling), or a list of ``{"name", "arguments": dict | str}``; ``0``
  forbids them. ``reasoning``: the summary text of a ``reasoning`` item (by default a
  reasoning model emits one, with a summary when ``reasoning.summary`` is set, and
  ``encrypted_content`` when ``include`` asks for ``reasoning.encrypted_content``).
  ``usage`` overrides usage fields, e.g. ``{"cached_tokens": 40}`` (input details) or
  ``{"reasoning_tokens": 64}``.
- ``error(status, message=None, type=None, code=None, headers=None, param=None)`` in
  the OpenAI shape.
- ``hang_before_headers(seconds)``, ``hang_mid_stream(after_chunks, seconds)``,
  ``drop_mid_stream(after_chunks)``, ``mid_stream_error(after_chunks, message=...,
  code="server_error")`` (an ``event: error`` frame, then the body ends),
  ``response_failed(after_chunks, message=..., code="server_error")`` (a
  ``response.failed`` event, then the body ends), ``garbage(body=None)``, ``slow(delay)``.

``after_chunks`` counts SSE events already written (``response.created`` is the first).

Like the real API the fake refuses, in its error shape: a missing or wrong key (401),
an unknown parameter such as ``messages`` (400 ``unknown_parameter``), a missing
``model``, an unknown model, Chat Completions shapes in ``input`` (content parts of type
``text``, a ``tool`` role) or ``tools`` (nested ``function``), a ``function_call``
whose ``arguments`` is not a string, a ``function_call_output`` without an earlier
``function_call`` of the same ``call_id``, a ``reasoning`` item without
``encrypted_content`` when ``store`` is false (404), ``reasoning`` on a model that does
not reason, and ``max_output_tokens`` under 16.

Default reply: ``"Hello! You said: <last user text>"``; a call to the first function
tool when the last user text contains "weather" (or ``tool_choice`` is ``required``).
``requests`` records every request; ``closed_streams`` counts responses requests whose
client went away before the answer finished (``stream_closed`` is set each time);
fake-initiated drops don't count.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_ALNUM = string.ascii_letters + string.digits
_INVALID = "invalid_request_error"
_PARAMETERS = {
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "stream",
    "stream_options", "store", "include", "reasoning", "text", "temperature", "top_p",
    "max_output_tokens", "max_tool_calls", "metadata", "previous_response_id", "truncation",
    "user", "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    "background", "top_logprobs", "conversation", "prompt",
}
_INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio")
_OUTPUT_PARTS = ("output_text", "refusal")


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
    """How to answer one responses request; build with the helper functions."""

    text: str | None = None
    chunks: int | None = None
    delay: float | None = None
    tool_calls: int | list[dict[str, Any]] | None = None
    reasoning: str | None = None
    final_status: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    status: int = 200
    error: dict[str, Any] | None = None  # HTTP error body["error"], or the stream error
    headers: dict[str, str] = field(default_factory=dict)
    hang_before_headers: float = 0.0
    hang_after: int | None = None
    hang_seconds: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    failed: bool = False  # the stream error is a response.failed event
    garbage: bytes | None = None


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
    status: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text, chunks, delay, tool_calls, reasoning, status, dict(usage or {}))


def _err(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


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
    code: str = "server_error",
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error={"code": code, "message": message})


def response_failed(
    after_chunks: int,
    message: str = "The server had an error while processing your request. Sorry about that!",
    code: str = "server_error",
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error={"code": code, "message": message},
                     failed=True)


def garbage(body: bytes | None = None) -> Behaviour:
    return Behaviour(garbage=body or b"")


def slow(delay_per_chunk: float) -> Behaviour:
    return Behaviour(delay=delay_per_chunk)


# ----------------------------------------------------------------------------- helpers

def _rand(n: int, alphabet: str = "0123456789abcdef") -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _item_id(prefix: str) -> str:
    return f"{prefix}_{_rand(48)}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tokens(s: str) -> int:
    return max(1, (len(s) + 3) // 4)


def _split(s: str, n: int) -> list[str]:
    n = max(1, min(n, len(s)))
    return [s[i * len(s) // n : (i + 1) * len(s) // n] for i in range(n)] if s else [""]


def _fake_args(schema: Any) -> str:
    props = (schema or {}).get("properties", {}) if isinstance(schema, dict) else {}
    by_type: dict[Any, Any] = {"number": 1, "integer": 1, "boolean": True, "array": [],
                               "object": {}}
    args: dict[str, Any] = {}
    for name, prop in (props or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        default = "Paris" if name in ("location", "city") else "test"
        args[name] = (prop.get("enum") or [by_type.get(prop.get("type"), default)])[0]
    return orjson.dumps(args or {"location": "Paris"}).decode()


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"x-request-id": f"req_{secrets.token_hex(16)}", "openai-processing-ms": "9"}
    return web.Response(
        status=status, body=obj if isinstance(obj, bytes) else orjson.dumps(obj),
        content_type="application/json", headers={**hdrs, **(headers or {})},
    )


def _oai_error(status: int, message: str, code: str | None = None, param: str | None = None,
               type_: str = _INVALID) -> web.Response:
    return _json(status, {"error": _err(message, type_, code, param)})


def _ratelimit_headers() -> dict[str, str]:
    return {"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "4000000",
            "x-ratelimit-remaining-tokens": "3999000", "x-ratelimit-reset-tokens": "15ms"}


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# ----------------------------------------------------------------------------- the fake

class FakeResponses:
    """In-process fake of the OpenAI Responses API (see module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = "sk-upstream-test",
        models: tuple[str, ...] | list[str] = ("gpt-5-mini", "gpt-4.1-mini", "o4-mini"),
        reasoning_models: tuple[str, ...] | list[str] = ("gpt-5-mini", "o4-mini"),
        chunks: int = 4,
        delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.reasoning_models = set(reasoning_models)
        self.chunks = chunks
        self.delay = delay
        self.base_url = ""  # for tests: set it once the app is served
        self.requests: list[Recorded] = []
        self.script: list[Behaviour] = []
        self.closed_streams = 0
        self.stream_closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/responses", self._responses)
        self.app.router.add_get("/v1/models", self._models)

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
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _oai_error(401, "You didn't provide an API key. You need to provide your API "
                              "key in an Authorization header using Bearer auth (i.e. "
                              "Authorization: Bearer YOUR_KEY).")
        if auth != f"Bearer {self.api_key}":
            key = auth.removeprefix("Bearer ").strip()
            masked = f"{key[:8]}{'*' * 10}{key[-4:]}" if len(key) > 12 else key
            return _oai_error(401, f"Incorrect API key provided: {masked}. You can find your "
                              "API key at https://platform.openai.com/account/api-keys.",
                              "invalid_api_key")
        return None

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
    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        data = [{"id": m, "object": "model", "created": 1744316542, "owned_by": "system"}
                for m in self.models]
        return _json(200, {"object": "list", "data": data})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
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
            return _oai_error(400, "We could not parse the JSON body of your request. (HINT: "
                              "This likely means you aren't using your HTTP library correctly. "
                              "The OpenAI API expects a JSON payload, but what was sent was not "
                              "valid JSON.)")
        if (problem := self._check(body)) is not None:
            return problem
        stream = bool(body.get("stream"))
        if b.garbage is not None and stream:
            junk = b.garbage or b"<html>502 Bad Gateway</html>\r\nnot an event stream {{\x00\n\n"
            return web.Response(body=junk, headers={"Content-Type": "text/event-stream"})
        if b.garbage is not None:
            return _json(200, b.garbage or b"<html><body>upstream says hi</body></html> {not json")
        if b.error is not None and not stream:
            return _oai_error(500, b.error["message"], b.error["code"], type_="server_error")
        plan = self._plan(body, b)
        return await (self._stream if stream else self._complete)(request, body, b, plan)

    def _check(self, body: dict[str, Any]) -> web.Response | None:
        for name in body:
            if name not in _PARAMETERS:
                return _oai_error(400, f"Unknown parameter: '{name}'.", "unknown_parameter", name)
        if "model" not in body:
            return _oai_error(400, "Missing required parameter: 'model'.",
                              "missing_required_parameter", "model")
        model = body["model"]
        if model not in self.models:
            return _oai_error(400, f"The requested model '{model}' does not exist.",
                              "model_not_found", "model")
        reasoning = body.get("reasoning")
        if reasoning and model not in self.reasoning_models and reasoning.get("effort"):
            return _oai_error(400, "Unsupported parameter: 'reasoning.effort' is not supported "
                              "with this model.", "unsupported_parameter", "reasoning.effort")
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and limit < 16:
            return _oai_error(400, "Invalid 'max_output_tokens': integer below minimum value. "
                              f"Expected a value >= 16, but got {limit} instead.",
                              "integer_below_min_value", "max_output_tokens")
        for i, tool in enumerate(body.get("tools") or []):
            if not isinstance(tool, dict) or "type" not in tool:
                return _oai_error(400, f"Missing required parameter: 'tools[{i}].type'.",
                                  "missing_required_parameter", f"tools[{i}].type")
            if tool["type"] == "function" and "name" not in tool:
                return _oai_error(400, f"Missing required parameter: 'tools[{i}].name'.",
                                  "missing_required_parameter", f"tools[{i}].name")
        return _check_input(body.get("input"), store=body.get("store", True) is not False)

    # ---- reply construction ---------------------------------------------------------
    def _plan(self, body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
        messages = [it for it in items if isinstance(it, dict) and "role" in it]
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        choice = body.get("tool_choice", "auto")
        n = b.tool_calls
        if n is None:
            last = items[-1] if items else {}
            said = _text_of(last.get("content")).lower()
            wants = last.get("role") == "user" and "weather" in said
            forced = choice == "required" or (isinstance(choice, dict)
                                              and choice.get("type") == "function")
            n = 1 if tools and (wants or forced) and choice != "none" else 0
        if isinstance(n, list):
            calls = [{"name": c["name"], "arguments": c["arguments"]
                      if isinstance(c["arguments"], str)
                      else orjson.dumps(c["arguments"]).decode()} for c in n]
        else:
            if isinstance(choice, dict) and choice.get("name"):
                tools = [t for t in tools if t["name"] == choice["name"]] or tools
            fallback = {"name": "get_weather", "parameters": {}}
            picked = [(tools or [fallback])[i % max(1, len(tools))] for i in range(n)]
            calls = [{"name": t["name"], "arguments": _fake_args(t.get("parameters"))}
                     for t in picked]
        config = body.get("reasoning") or {}
        reasons = b.reasoning is not None or body["model"] in self.reasoning_models
        summary = b.reasoning
        if summary is None and config.get("summary"):
            summary = "**Answering the user**\n\nI should reply briefly."
        encrypted = "reasoning.encrypted_content" in (body.get("include") or [])
        users = [m for m in messages if m.get("role") == "user"]
        said = _text_of(users[-1].get("content")) if users else ""
        text = b.text if b.text is not None else (None if calls else f"Hello! You said: {said}")
        prompt = _tokens(str(body.get("instructions") or ""))
        prompt += sum(_tokens(_text_of(m.get("content"))) + 3 for m in messages)
        out = _tokens(text or "") + sum(_tokens(c["name"] + c["arguments"]) for c in calls)
        reasoning_tokens = 64 if reasons else 0
        cached = b.usage.get("cached_tokens", 0)
        reasoning_tokens = b.usage.get("reasoning_tokens", reasoning_tokens)
        input_tokens = b.usage.get("input_tokens", prompt)
        output_tokens = b.usage.get("output_tokens", out + reasoning_tokens)
        usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": output_tokens,
                 "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                 "total_tokens": input_tokens + output_tokens}
        return {"reasons": reasons, "summary": summary, "encrypted": encrypted, "text": text,
                "calls": calls, "usage": usage, "id": f"resp_{_rand(48)}",
                "created_at": int(time.time())}

    def _items(self, plan: dict[str, Any]) -> list[dict[str, Any]]:
        """The finished output items."""
        items: list[dict[str, Any]] = []
        if plan["reasons"]:
            item: dict[str, Any] = {"id": _item_id("rs"), "type": "reasoning", "summary": []}
            if plan["summary"] is not None:
                item["summary"] = [{"type": "summary_text", "text": plan["summary"]}]
            if plan["encrypted"]:
                item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(
                    secrets.token_bytes(96)).decode()
            items.append(item)
        if plan["text"] is not None:
            items.append({"id": _item_id("msg"), "type": "message", "status": "completed",
                          "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                       "text": plan["text"]}], "role": "assistant"})
        items += [{"id": _item_id("fc"), "type": "function_call", "status": "completed",
                   "arguments": c["arguments"], "call_id": f"call_{_rand(24, _ALNUM)}",
                   "name": c["name"]} for c in plan["calls"]]
        return items

    def _response(self, body: dict[str, Any], plan: dict[str, Any], status: str,
                  output: list[dict[str, Any]], usage: dict[str, Any] | None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        config = body.get("reasoning") or {}
        return {
            "id": plan["id"], "object": "response", "created_at": plan["created_at"],
            "status": status, "background": False, "error": error, "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "model": body["model"], "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": config.get("effort", "medium") if plan["reasons"] else None,
                          "summary": config.get("summary")},
            "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_logprobs": 0, "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": usage, "user": None, "metadata": body.get("metadata") or {},
        }

    async def _complete(self, request: web.Request, body: dict[str, Any], b: Behaviour,
                        plan: dict[str, Any]):
        doc = self._response(body, plan, b.final_status or "completed", self._items(plan),
                             plan["usage"])
        doc["completed_at"] = plan["created_at"] + 1
        payload = orjson.dumps(doc)
        delay = b.delay if b.delay is not None else self.delay
        if delay:
            await self._sleep(request, delay * (b.chunks or self.chunks))
        if b.hang_after is None and b.drop_after is None:
            return _json(200, payload, _ratelimit_headers())
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

    def _events(self, body: dict[str, Any], b: Behaviour, plan: dict[str, Any]) -> list[tuple]:
        """The stream as ``(name, data-without-sequence_number)`` pairs, in order."""
        n = b.chunks or self.chunks
        items = self._items(plan)
        started = self._response(body, plan, "in_progress", [], None)
        out: list[tuple] = [("response.created", {"response": started}),
                            ("response.in_progress", {"response": started})]

        def obfuscated(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "obfuscation": _rand(secrets.randbelow(12) + 1, _ALNUM)}

        for index, item in enumerate(items):
            ref = {"item_id": item["id"], "output_index": index}
            if item["type"] == "reasoning":
                out.append(("response.output_item.added", {
                    "output_index": index, "item": {"id": item["id"], "type": "reasoning",
                                                    "summary": []}}))
                for s_index, part in enumerate(item["summary"]):
                    sref = {**ref, "summary_index": s_index}
                    out.append(("response.reasoning_summary_part.added",
                                {**sref, "part": {"type": "summary_text", "text": ""}}))
                    out += [("response.reasoning_summary_text.delta",
                             obfuscated({**sref, "delta": p})) for p in _split(part["text"], n)]
                    out.append(("response.reasoning_summary_text.done",
                                {**sref, "text": part["text"]}))
                    out.append(("response.reasoning_summary_part.done", {**sref, "part": part}))
            elif item["type"] == "message":
                text = item["content"][0]["text"]
                pending = {**item, "status": "in_progress", "content": []}
                out.append(("response.output_item.added", {"output_index": index,
                                                           "item": pending}))
                cref = {**ref, "content_index": 0}
                empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
                out.append(("response.content_part.added", {**cref, "part": empty}))
                out += [("response.output_text.delta",
                         obfuscated({**cref, "delta": p, "logprobs": []}))
                        for p in _split(text, n)]
                out.append(("response.output_text.done", {**cref, "text": text, "logprobs": []}))
                out.append(("response.content_part.done", {**cref, "part": item["content"][0]}))
            else:
                out.append(("response.output_item.added", {
                    "output_index": index, "item": {**item, "status": "in_progress",
                                                    "arguments": ""}}))
                out += [("response.function_call_arguments.delta", obfuscated({**ref, "delta": p}))
                        for p in _split(item["arguments"], max(3, n))]
                out.append(("response.function_call_arguments.done",
                            {**ref, "arguments": item["arguments"]}))
            out.append(("response.output_item.done", {"output_index": index, "item": item}))
        final = self._response(body, plan, b.final_status or "completed", items, plan["usage"])
        final["completed_at"] = plan["created_at"] + 1
        out.append(("response.completed" if final["status"] == "completed"
                    else f"response.{final['status']}", {"response": final}))
        return out

    async def _stream(self, request: web.Request, body: dict[str, Any], b: Behaviour,
                      plan: dict[str, Any]):
        events = self._events(body, b, plan)
        delay = b.delay if b.delay is not None else self.delay
        headers = {"Content-Type": "text/event-stream; charset=utf-8",
                   "x-request-id": f"req_{secrets.token_hex(16)}", **_ratelimit_headers()}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for sent, (name, data) in enumerate(events):
            if b.hang_after == sent:
                await self._sleep(request, b.hang_seconds)
            if b.drop_after == sent:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if b.error_after == sent:
                assert b.error is not None
                if b.failed:
                    failed = self._response(body, plan, "failed", [], None, b.error)
                    await resp.write(_sse("response.failed", {
                        "type": "response.failed", "sequence_number": sent, "response": failed}))
                else:
                    await resp.write(_sse("error", {"type": "error", "sequence_number": sent,
                                                    "param": None, **b.error}))
                break
            await self._sleep(request, delay if sent else 0.0)
            await resp.write(_sse(name, {"type": name, "sequence_number": sent, **data}))
        await resp.write_eof()
        return resp


# ----------------------------------------------------------------------------- validation

def _check_input(items: Any, *, store: bool) -> web.Response | None:
    """The error the real API gives for ``input``, or None."""
    if items is None or isinstance(items, str):
        return None
    if not isinstance(items, list):
        return _oai_error(400, "Invalid type for 'input': expected one of a string or array of "
                          "input items, but got an object instead.", "invalid_type", "input")
    calls: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return _oai_error(400, f"Invalid type for 'input[{i}]'.", "invalid_type", f"input[{i}]")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                return _oai_error(400, f"Invalid value: '{role}'. Supported values are: "
                                  "'assistant', 'system', 'developer', and 'user'.",
                                  "invalid_value", f"input[{i}].role")
            content = item.get("content")
            if isinstance(content, list):
                allowed = _OUTPUT_PARTS if role == "assistant" else _INPUT_PARTS
                for j, part in enumerate(content):
                    kind_j = part.get("type") if isinstance(part, dict) else None
                    if kind_j not in allowed:
                        supported = ", ".join(f"'{a}'" for a in allowed[:-1])
                        return _oai_error(400, f"Invalid value: '{kind_j}'. Supported values "
                                          f"are: {supported} and '{allowed[-1]}'.",
                                          "invalid_value", f"input[{i}].content[{j}].type")
            elif not isinstance(content, str):
                return _oai_error(400, f"Missing required parameter: 'input[{i}].content'.",
                                  "missing_required_parameter", f"input[{i}].content")
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if name not in item:
                    return _oai_error(400, f"Missing required parameter: 'input[{i}].{name}'.",
                                      "missing_required_parameter", f"input[{i}].{name}")
            if not isinstance(item["arguments"], str):
                return _oai_error(400, f"Invalid type for 'input[{i}].arguments': expected a "
                                  "string, but got an object instead.", "invalid_type",
                                  f"input[{i}].arguments")
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                return _oai_error(400, "No tool call found for function call output with "
                                  f"call_id {item.get('call_id')}.", None, "input")
        elif kind == "reasoning":
            if not store and not item.get("encrypted_content"):
                return _oai_error(404, f"Item with id '{item.get('id')}' not found. Items are not "
                                  "persisted when `store` is set to false. Try again with "
                                  "`store` set to true, or remove this item from your input.",
                                  None, "input")
        elif kind != "item_reference":
            return _oai_error(400, f"Invalid value: '{kind}'. Supported values are: 'message', "
                              "'function_call', 'function_call_output', 'reasoning' and "
                              "'item_reference'.", "invalid_value", f"input[{i}].type")
    return None
