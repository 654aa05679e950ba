"""Fake Anthropic Messages API upstream for gateway tests.

Speaks the real wire format of ``POST /v1/messages`` (and ``/v1/messages/count_tokens``,
whose ``count_script`` queue takes ``error(...)`` behaviours) (JSON, and SSE with
``message_start``, ``ping``, ``content_block_start`` / ``_delta`` / ``_stop``,
``message_delta``, ``message_stop``, ``error``) and ``GET /v1/models``, checked
against the anthropic-python SDK. Usage::

    fake = FakeAnthropic()
    fake.script += [error(529), reply(text="hi", chunks=2, thinking="Hmm.")]
    server = await aiohttp_server(fake.app)
    client = AsyncAnthropic(base_url=str(server.make_url("")), api_key="sk-ant-upstream-test")

``script`` is a queue: each messages request pops one ``Behaviour`` (an empty
queue means the default reply). Behaviour helpers, each for one request:

- ``reply(text=None, chunks=None, delay=None, tool_calls=None, thinking=None,
  redacted_thinking=False, stop_reason=None, usage=None)``
  ``tool_calls``: ``N`` forces N ``tool_use`` blocks (to tools[i], cycling), or a list of
  ``{"name": str, "arguments": dict}``; ``0`` forbids them. ``thinking``: the text of a
  ``thinking`` block (signed, first); by default one appears when the request enables
  thinking. ``usage`` overrides usage fields (e.g. ``{"cache_read_input_tokens": 900}``).
- ``error(status, message=None, type=None, headers=None)``: ``{"type": "error", "error":
  {...}, "request_id": ...}``; ``type`` defaults from the status (529 "overloaded_error");
  a 429 carries ``retry-after`` and ``anthropic-ratelimit-*`` headers unless overridden.
- ``hang_before_headers(seconds)``, ``hang_mid_stream(after_chunks, seconds)``,
  ``drop_mid_stream(after_chunks)`` (aborts the TCP connection),
  ``mid_stream_error(after_chunks, message="Overloaded", type="overloaded_error")``
  (an ``event: error`` frame, then the body ends), ``garbage(body=None)``, ``slow(delay)``.

``after_chunks`` counts SSE events already written (``message_start`` is the first, the
``ping`` right after it the second). On non-stream requests hang/drop act after half the
JSON body and ``mid_stream_error`` becomes that error's HTTP status.

Like the real API the fake refuses, with its error shape: a missing or wrong key (401;
``x-api-key`` or ``Authorization: Bearer``), a missing ``anthropic-version`` header, a
missing ``model`` / ``max_tokens`` / ``messages`` (400), an unknown model (404), a
``system`` role message (accepted after the first message with the
``mid-conversation-system-2026-04-07`` beta in ``anthropic-beta``), content blocks of
unknown type or without their fields (a ``thinking`` block without ``signature``, a
``tool_use`` whose ``input`` is not an object), ``tool_result`` blocks without a matching
``tool_use`` in the previous message (and the reverse), and a thinking ``budget_tokens``
under 1024 or not under ``max_tokens``.

Default reply: ``"Hello! You said: <last user text>"``; a ``tool_use`` of the first tool
when ``tools`` is present and the last user text contains "weather" (or ``tool_choice``
is ``any`` / ``tool``). ``requests`` records every request; ``closed_streams`` counts
messages requests whose client went away before the answer finished (``stream_closed``
is set each time); fake-initiated drops don't count.
``latency``, ``fail_rate`` and ``seed`` act as in every fake (``fakes.base``); its failures
are ``api_error`` 500s and 503s.
"""

from __future__ import annotations

import base64
import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import (
    FakeUpstream,
    Recorded,
    fake_args,
    fault_helpers,
    json_response,
    pick,
    rand,
    split,
    sse,
    tokens,
)

__all__ = ["Behaviour", "FakeAnthropic", "Recorded", "drop_mid_stream", "error", "garbage",
           "hang_before_headers", "hang_mid_stream", "mid_stream_error", "reply", "slow"]

_TYPE_OF_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}
_STATUS_OF_TYPE = {v: k for k, v in _TYPE_OF_STATUS.items()}
_BLOCK_TYPES = {
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking",
    "redacted_thinking", "server_tool_use", "web_search_tool_result",
}
_REQUIRED_BLOCK_FIELDS = {
    "text": ("text",), "image": ("source",), "document": ("source",),
    "tool_use": ("id", "name", "input"), "tool_result": ("tool_use_id",),
    "thinking": ("thinking", "signature"), "redacted_thinking": ("data",),
}



@dataclass
class Behaviour(base.Behaviour):
    """How to answer one messages request; build with the helper functions.

    ``error`` is ``{"type", "message"}``: an HTTP error or the mid-stream ``error`` event.
    """

    thinking: str | None = None
    redacted_thinking: bool = False
    stop_reason: str | None = None


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    thinking: str | None = None,
    redacted_thinking: bool = False,
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text=text, chunks=chunks, delay=delay, tool_calls=tool_calls,
                     thinking=thinking, redacted_thinking=redacted_thinking,
                     stop_reason=stop_reason, usage=dict(usage or {}))


def error(
    status: int,
    message: str | None = None,
    type: str | None = None,  # mirrors the Anthropic field name
    headers: dict[str, str] | None = None,
) -> Behaviour:
    type = type or _TYPE_OF_STATUS.get(status, "api_error")
    defaults: dict[str, str] = {}
    if status == 429:
        reset = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        defaults = {"retry-after": "1", "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": reset}
    body = {"type": type, "message": message or f"Fake upstream error {status}"}
    return Behaviour(status=status, error=body, headers={**defaults, **(headers or {})})



def mid_stream_error(
    after_chunks: int, message: str = "Overloaded", type: str = "overloaded_error"
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error={"type": type, "message": message})


hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)


# ----------------------------------------------------------------------------- helpers

def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content
                        if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _event(data: dict[str, Any]) -> bytes:
    """An SSE event named for its data's ``type``, as every Anthropic stream event is."""
    return sse(data, data["type"])


def _error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message},
            "request_id": f"req_011C{rand(20)}"}


def _ratelimit_headers() -> dict[str, str]:
    reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "400000",
            "anthropic-ratelimit-tokens-remaining": "399000",
            "anthropic-ratelimit-tokens-reset": reset}


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, obj, {"request-id": f"req_011C{rand(20)}", **(headers or {})})


def _ant_error(status: int, message: str, type_: str | None = None) -> web.Response:
    return _json(status, _error_body(type_ or _TYPE_OF_STATUS.get(status, "api_error"), message))


# ----------------------------------------------------------------------------- the fake

class FakeAnthropic(FakeUpstream[Behaviour]):
    """In-process fake of the Anthropic Messages API (see module docstring)."""

    behaviour = Behaviour
    key_in = ("x-api-key", "bearer")
    respond_json = staticmethod(_json)

    def __init__(
        self,
        *,
        api_key: str | None = "sk-ant-upstream-test",
        models: Sequence[str] = ("claude-sonnet-4-6", "claude-haiku-4-5"),
        ping: bool = True,
        max_page: int = 1000,
        **knobs: Any,  # chunks, delay, latency, fail_rate, seed: see fakes.base
    ) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.ping = ping  # send a ping right after message_start, as the real API does
        self.max_page = max_page  # GET /v1/models page size cap (the real API's is 1000)
        self.app.router.add_post("/v1/messages", self._handle)
        self.app.router.add_get("/v1/models", self._models)
        # POST /v1/messages/count_tokens: its own queue (only ``error(...)`` behaviours apply)
        self.count_script: list[Behaviour] = []
        self.app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    def _auth_missing(self) -> web.Response:
        return _ant_error(401, "x-api-key header is required")

    def _auth_wrong(self, key: str) -> web.Response:
        return _ant_error(401, "invalid x-api-key")

    def _failure(self, status: int) -> Behaviour:
        return error(status, "Internal server error", "api_error")

    def _error_body(self, b: Behaviour) -> Any:
        return _error_body(b.error["type"], b.error["message"])

    # ---- handlers -------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        limit = min(int(request.query.get("limit", "20")), self.max_page)
        after = request.query.get("after_id")
        start = self.models.index(after) + 1 if after in self.models else 0
        page = self.models[start:start + limit]
        data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                 "created_at": "2025-09-29T00:00:00Z"} for m in page]
        return _json(200, {"data": data, "has_more": start + limit < len(self.models),
                           "first_id": page[0] if page else None,
                           "last_id": page[-1] if page else None})

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """``{"input_tokens": N}``, counted the way this fake counts usage."""
        rec = await self._record(request)
        b = self.count_script.pop(0) if self.count_script else Behaviour()
        if b.error is not None:
            return _json(b.status, self._error_body(b), b.headers)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json
        if (refusal := self._refusal(request, body, _check_count)) is not None:
            return refusal
        count = tokens(_text_of(body.get("system")))
        count += sum(tokens(_text_of(m.get("content"))) + 3 for m in body["messages"])
        count += sum(tokens(orjson.dumps(t).decode()) for t in body.get("tools") or [])
        return _json(200, {"input_tokens": count})

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        body = rec.json
        mid_system = "mid-conversation-system" in request.headers.get("anthropic-beta", "")
        check = functools.partial(_check_request, mid_system=mid_system)
        if (refusal := self._refusal(request, body, check)) is not None:
            return refusal
        stream = bool(body.get("stream"))
        if b.garbage is not None:
            return self._garbage(b, stream)
        if b.error is not None and not stream:  # mid_stream_error on a plain request
            status = _STATUS_OF_TYPE.get(b.error["type"], 500)
            return _json(status, _error_body(b.error["type"], b.error["message"]))
        return await (self._stream if stream else self._complete)(request, body, b)

    def _refusal(self, request: web.Request, body: Any,
                 check: Callable[[dict[str, Any]], str | None]) -> web.Response | None:
        """The real API's 400 or 404 for a request whose body ``check`` finds fault with."""
        if not request.headers.get("anthropic-version"):
            return _ant_error(400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            return _ant_error(400, "There was an error parsing the body: invalid JSON")
        if (problem := check(body)) is not None:
            return _ant_error(400, problem)
        if body["model"] not in self.models:
            return _ant_error(404, f"model: {body['model']}")
        return None

    # ---- reply construction ---------------------------------------------------------
    def _blocks(self, body: dict[str, Any], b: Behaviour) -> list[dict[str, Any]]:
        """The reply's content blocks, complete."""
        messages = body["messages"]
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
        choice = body.get("tool_choice") or {}
        n = b.tool_calls
        if n is None:
            last = messages[-1] if messages else {}
            said = _text_of(last.get("content")).lower()
            wants = last.get("role") == "user" and "weather" in said
            n = 1 if tools and (wants or choice.get("type") in ("any", "tool")) else 0
            if choice.get("type") == "none":
                n = 0
        if isinstance(n, list):
            calls = [{"name": c["name"], "input": c["arguments"]} for c in n]
        else:
            if choice.get("type") == "tool":
                tools = [t for t in tools if t["name"] == choice.get("name")] or tools
            picked = pick(tools, n, {"name": "get_weather", "input_schema": {}})
            calls = [{"name": t["name"], "input": fake_args(t.get("input_schema"))}
                     for t in picked]
        blocks: list[dict[str, Any]] = []
        thinking = b.thinking
        if thinking is None and (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
            thinking = "Let me think about what the user asked."
        if thinking is not None:
            signature = base64.b64encode(b"\x12\xa4" + secrets.token_bytes(70)).decode()
            blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
        if b.redacted_thinking:
            data = base64.b64encode(b"\x12\x8a" + secrets.token_bytes(94)).decode()
            blocks.append({"type": "redacted_thinking", "data": data})
        users = [m for m in messages if m.get("role") == "user"]
        said = _text_of(users[-1].get("content")) if users else ""
        text = b.text if b.text is not None else (None if calls else f"Hello! You said: {said}")
        if text is not None:
            blocks.append({"type": "text", "text": text})
        blocks += [{"type": "tool_use", "id": f"toolu_01{rand(22)}", "name": c["name"],
                    "input": c["input"]} for c in calls]
        return blocks

    def _usage(self, body: dict[str, Any], blocks: list[dict[str, Any]], b: Behaviour):
        prompt = tokens(_text_of(body.get("system")))
        prompt += sum(tokens(_text_of(m.get("content"))) + 3 for m in body["messages"])
        out = sum(tokens(blk.get("text") or blk.get("thinking") or orjson.dumps(
            blk.get("input", "")).decode()) for blk in blocks)
        usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": out}
        usage.update(b.usage)
        return usage

    def _stop_reason(self, blocks: list[dict[str, Any]], b: Behaviour) -> str:
        if b.stop_reason:
            return b.stop_reason
        return "tool_use" if any(blk["type"] == "tool_use" for blk in blocks) else "end_turn"

    def _message(self, body: dict[str, Any], content: list[Any], usage: dict[str, Any],
                 stop_reason: str | None) -> dict[str, Any]:
        return {"id": f"msg_01{rand(22)}", "type": "message", "role": "assistant",
                "model": body["model"], "content": content, "stop_reason": stop_reason,
                "stop_sequence": None, "usage": usage}

    async def _complete(self, request: web.Request, body: dict[str, Any], b: Behaviour):
        blocks = self._blocks(body, b)
        usage = {**self._usage(body, blocks, b), "service_tier": "standard",
                 "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                    "ephemeral_1h_input_tokens": 0}}
        payload = orjson.dumps(self._message(body, blocks, usage, self._stop_reason(blocks, b)))
        return await self._send_whole(request, b, payload, _ratelimit_headers())

    def _events(self, body: dict[str, Any], b: Behaviour) -> list[bytes]:
        """All SSE events of the stream, in the real API's order."""
        blocks = self._blocks(body, b)
        usage = self._usage(body, blocks, b)
        n = b.chunks or self.chunks
        start_usage = {**usage, "output_tokens": 1, "service_tier": "standard"}
        out = [_event({"type": "message_start",
                       "message": self._message(body, [], start_usage, None)})]
        if self.ping:
            out.append(_event({"type": "ping"}))
        for i, blk in enumerate(blocks):
            kind = blk["type"]
            first: dict[str, Any] = {
                "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                "text": {"type": "text", "text": ""},
                "tool_use": {**blk, "input": {}},
                "redacted_thinking": blk,
            }[kind]
            out.append(_event({"type": "content_block_start", "index": i,
                               "content_block": first}))
            deltas: list[dict[str, Any]] = []
            if kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": p}
                          for p in split(blk["thinking"], n)]
                deltas.append({"type": "signature_delta", "signature": blk["signature"]})
            elif kind == "text":
                deltas = [{"type": "text_delta", "text": p} for p in split(blk["text"], n)]
            elif kind == "tool_use":
                args = orjson.dumps(blk["input"]).decode()
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas += [{"type": "input_json_delta", "partial_json": p}
                           for p in split(args, max(3, n))]
            out += [_event({"type": "content_block_delta", "index": i, "delta": d})
                    for d in deltas]
            out.append(_event({"type": "content_block_stop", "index": i}))
        out.append(_event({
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(blocks, b), "stop_sequence": None},
            "usage": usage,
        }))
        out.append(_event({"type": "message_stop"}))
        return out

    async def _stream(self, request: web.Request, body: dict[str, Any], b: Behaviour):
        headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                   "request-id": f"req_011C{rand(20)}", **_ratelimit_headers()}
        return await self._send_stream(request, b, self._events(body, b), headers,
                                       lambda sent: _event({"type": "error", "error": b.error}))


# ----------------------------------------------------------------------------- validation

def _check_request(body: dict[str, Any], *, mid_system: bool = False) -> str | None:
    """The 400 message the real API would give for ``body``, or None."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    system = body.get("system")
    text_blocks = isinstance(system, list) and all(
        isinstance(s, dict) and s.get("type") == "text" and isinstance(s.get("text"), str)
        for s in system
    )
    if system is not None and not isinstance(system, str) and not text_blocks:
        return "system: Input should be a valid string or a list of text blocks"
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float)
                                        and 0 <= temperature <= 1):
        return "temperature: Input should be less than or equal to 1"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int):
            return "thinking.enabled.budget_tokens: Field required"
        if budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if max_tokens <= budget:
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{i}.name: Field required"
        if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}.custom.input_schema: Field required"
    return _check_messages(body["messages"], mid_system=mid_system)


def _check_count(body: dict[str, Any]) -> str | None:
    """The 400 message for a count_tokens ``body``, or None."""
    for name in ("model", "messages"):
        if name not in body:
            return f"{name}: Field required"
    return _check_messages(body["messages"])


def _check_messages(messages: Any, *, mid_system: bool = False) -> str | None:
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    tool_uses: list[str] = []  # ids in the previous assistant message
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = msg.get("role")
        if role == "system" and mid_system and i > 0:  # the mid-conversation-system beta
            continue
        if role == "system":
            return ('messages: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in msg:
            return f"messages.{i}.content: Field required"
        content = msg["content"]
        if isinstance(content, str):
            blocks: list[Any] = []
        elif isinstance(content, list):
            blocks = content
        else:
            return f"messages.{i}.content: Input should be a valid string or list"
        results: list[str] = []
        for j, blk in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            kind = blk.get("type") if isinstance(blk, dict) else None
            if kind not in _BLOCK_TYPES:
                return (f"{where}: Input tag '{kind}' found using 'type' does not match any of "
                        f"the expected tags: {', '.join(sorted(repr(t) for t in _BLOCK_TYPES))}")
            for name in _REQUIRED_BLOCK_FIELDS.get(kind, ()):
                if name not in blk:
                    return f"{where}.{kind}.{name}: Field required"
            if kind == "tool_use" and not isinstance(blk["input"], dict):
                return f"{where}.tool_use.input: Input should be a valid dictionary"
            if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
                return f"{where}: `{kind}` blocks can only appear in `assistant` messages"
            if kind == "tool_result":
                if role != "user":
                    return f"{where}: `tool_result` blocks can only appear in `user` messages"
                results.append(blk["tool_use_id"])
        unexpected = [r for r in results if r not in tool_uses]
        if unexpected:
            return (f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {unexpected[0]}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.")
        if tool_uses and role == "user":
            missing = [t for t in tool_uses if t not in results]
            if missing:
                return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` "
                        f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                        "must have a corresponding `tool_result` block in the next message.")
        tool_uses = [blk["id"] for blk in blocks if blk.get("type") == "tool_use"]
    return None
