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
fake-initiated drops don't count. ``latency``, ``fail_rate`` and ``seed`` act as in every
fake (``fakes.base``); its failures are ``server_error`` 500s and 503s.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import Recorded, fake_args, fault_helpers, pick, rand, split, sse, tokens
from fakes.openai_upstream import OpenAIFake, error_body, openai_json

__all__ = ["Behaviour", "FakeResponses", "Recorded", "drop_mid_stream", "error", "garbage",
           "hang_before_headers", "hang_mid_stream", "mid_stream_error", "reply",
           "response_failed", "slow"]

_HEX = "0123456789abcdef"
_INVALID = "invalid_request_error"
_SORRY = "The server had an error while processing your request. Sorry about that!"
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
class Behaviour(base.Behaviour):
    """How to answer one responses request; build with the helper functions.

    ``error`` is the HTTP error ``body["error"]``, or the stream error's fields.
    """

    reasoning: str | None = None
    final_status: str | None = None
    failed: bool = False  # the stream error is a response.failed event


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
    status: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text=text, chunks=chunks, delay=delay, tool_calls=tool_calls,
                     reasoning=reasoning, final_status=status, usage=dict(usage or {}))


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
    code: str = "server_error",
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error={"code": code, "message": message})


def response_failed(
    after_chunks: int,
    message: str = _SORRY,
    code: str = "server_error",
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error={"code": code, "message": message},
                     failed=True)


hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)


# ----------------------------------------------------------------------------- helpers

def _item_id(prefix: str) -> str:
    return f"{prefix}_{rand(48, _HEX)}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _oai_error(status: int, message: str, code: str | None = None, param: str | None = None,
               type_: str = _INVALID) -> web.Response:
    return openai_json(status, {"error": error_body(status, message, type_, code, param)})


def _ratelimit_headers() -> dict[str, str]:
    return {"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "4000000",
            "x-ratelimit-remaining-tokens": "3999000", "x-ratelimit-reset-tokens": "15ms"}


def _event(name: str, sent: int, data: dict[str, Any]) -> bytes:
    """Stream event number ``sent``: named for its ``type``, numbered by ``sequence_number``."""
    return sse({"type": name, "sequence_number": sent, **data}, name)


# ----------------------------------------------------------------------------- the fake

class FakeResponses(OpenAIFake[Behaviour]):
    """In-process fake of the OpenAI Responses API (see module docstring)."""

    behaviour = Behaviour

    def __init__(
        self,
        *,
        api_key: str | None = "sk-upstream-test",
        models: Sequence[str] = ("gpt-5-mini", "gpt-4.1-mini", "o4-mini"),
        reasoning_models: Sequence[str] = ("gpt-5-mini", "o4-mini"),
        **knobs: Any,  # chunks, delay, latency, fail_rate, seed: see fakes.base
    ) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.reasoning_models = set(reasoning_models)
        self.app.router.add_post("/v1/responses", self._handle)
        self.app.router.add_get("/v1/models", self._models)

    # ---- handlers -------------------------------------------------------------------
    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        body = rec.json
        if not isinstance(body, dict):
            return _oai_error(400, "We could not parse the JSON body of your request. (HINT: "
                              "This likely means you aren't using your HTTP library correctly. "
                              "The OpenAI API expects a JSON payload, but what was sent was not "
                              "valid JSON.)")
        if (problem := self._check(body)) is not None:
            return problem
        stream = bool(body.get("stream"))
        if b.garbage is not None:
            return self._garbage(b, stream)
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
            picked = pick(tools, n, {"name": "get_weather", "parameters": {}})
            calls = [{"name": t["name"],
                      "arguments": orjson.dumps(fake_args(t.get("parameters"))).decode()}
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
        prompt = tokens(str(body.get("instructions") or ""))
        prompt += sum(tokens(_text_of(m.get("content"))) + 3 for m in messages)
        out = tokens(text or "") + sum(tokens(c["name"] + c["arguments"]) for c in calls)
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
                "calls": calls, "usage": usage, "id": f"resp_{rand(48, _HEX)}",
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
                   "arguments": c["arguments"], "call_id": f"call_{rand(24)}",
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
        return await self._send_whole(request, b, orjson.dumps(doc), _ratelimit_headers())

    def _events(self, body: dict[str, Any], b: Behaviour, plan: dict[str, Any]) -> list[tuple]:
        """The stream as ``(name, data-without-sequence_number)`` pairs, in order."""
        n = b.chunks or self.chunks
        items = self._items(plan)
        started = self._response(body, plan, "in_progress", [], None)
        out: list[tuple] = [("response.created", {"response": started}),
                            ("response.in_progress", {"response": started})]

        def obfuscated(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "obfuscation": rand(secrets.randbelow(12) + 1)}

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
                             obfuscated({**sref, "delta": p})) for p in split(part["text"], n)]
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
                        for p in split(text, n)]
                out.append(("response.output_text.done", {**cref, "text": text, "logprobs": []}))
                out.append(("response.content_part.done", {**cref, "part": item["content"][0]}))
            else:
                out.append(("response.output_item.added", {
                    "output_index": index, "item": {**item, "status": "in_progress",
                                                    "arguments": ""}}))
                out += [("response.function_call_arguments.delta", obfuscated({**ref, "delta": p}))
                        for p in split(item["arguments"], max(3, n))]
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
        frames = [_event(name, sent, data)
                  for sent, (name, data) in enumerate(self._events(body, b, plan))]
        headers = {"Content-Type": "text/event-stream; charset=utf-8",
                   "x-request-id": f"req_{secrets.token_hex(16)}", **_ratelimit_headers()}

        def error_frame(sent: int) -> bytes:
            if b.failed:
                failed = self._response(body, plan, "failed", [], None, b.error)
                return _event("response.failed", sent, {"response": failed})
            return _event("error", sent, {"param": None, **b.error})

        return await self._send_stream(request, b, frames, headers, error_frame)


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
