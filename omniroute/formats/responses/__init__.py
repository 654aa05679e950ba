"""The OpenAI Responses wire format (``POST /v1/responses``), as Codex CLI speaks it.

Requests are item lists (messages, ``function_call`` / ``function_call_output``
items, replayed ``reasoning`` items); answers are ``response`` objects whose
``output`` holds the same kinds of items; streams are typed SSE events with a
``sequence_number``. Items and parts live in :mod:`responses_items`, the
stream transforms in :mod:`responses_stream`.

Conventions this module keeps:

* ``instructions`` and leading ``system``/``developer`` items form
  ``Request.system``; a developer item keeps its role in ``Text.meta``.
* Function tools inside a ``namespace`` tool are flattened to one canonical
  tool each, named ``<namespace>__<name>`` (or ``<namespace><name>`` when the
  namespace already ends in ``__``, as Codex's MCP namespaces do); the call is
  mapped back to ``namespace`` + ``name`` for the client.
* Hosted tools (``web_search``, ``image_generation``…) become ``Tool``s with
  ``meta = {"responses": {"raw": <definition>}}``: other formats drop them
  (:func:`~omniroute.formats.tools.hosted_raw`), a Responses upstream gets them back.
* ``custom`` (freeform) tools become a function taking ``{"input": string}``.
* Reasoning another format produced (an Anthropic signature…) travels to the
  client packed in ``encrypted_content`` (:mod:`carry`) and is unpacked when
  the client replays the item.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.json_text import json_object
from omniroute.formats.responses.items import (
    NAME,
    InputDecoder,
    ToolIndex,
    decode_response_object,
    decode_tools,
    encode_input,
    encode_tools,
    error_message,
    flat_name,
    frame_json,
    output_items,
    usage_from_object,
    usage_object,
)
from omniroute.hookspecs import hookimpl
from omniroute.sse import encode

__all__ = ["NAME", "ResponsesFormat", "response_from_frame"]

# request fields carried verbatim to a Responses upstream (canonical has no slot for them)
_PASSTHROUGH = (
    "store", "include", "previous_response_id", "prompt_cache_key", "service_tier",
    "truncation", "background", "safety_identifier", "max_tool_calls", "top_logprobs",
    "prompt_cache_retention", "conversation", "prompt",
)
# server-side conversation state: the gateway resolves it, an upstream never sees it
_SERVER_STATE = ("previous_response_id", "conversation")
_INCOMPLETE = {"max_tokens": "max_output_tokens", "content_filter": "content_filter"}
FAILED = {"code": "server_error", "message": "The model stopped with an error."}


# ---------------------------------------------------------------------------- request pieces


def _decode_tool_choice(raw: Any) -> c.ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return c.ToolChoice(raw)
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind in ("function", "custom") and raw.get("name"):
            return c.ToolChoice("tool", flat_name(raw.get("namespace"), str(raw["name"])))
        if kind == "allowed_tools":
            return c.ToolChoice("required" if raw.get("mode") == "required" else "auto")
        return c.ToolChoice("auto")  # a hosted tool: the raw choice rides in meta
    raise InvalidRequest("'tool_choice' is not valid.", param="tool_choice")


def _encode_tool_choice(choice: c.ToolChoice | None, tools: ToolIndex,
                        meta: dict[str, Any]) -> Any:
    if "tool_choice" in meta:
        return meta["tool_choice"]
    if choice is None:
        return None
    if choice.mode == "tool" and choice.name:
        namespace, name = tools.wire(choice.name)
        out: dict[str, Any] = {"type": "custom" if tools.is_custom(choice.name) else "function",
                               "name": name}
        if namespace:
            out["namespace"] = namespace
        return out
    return choice.mode if choice.mode != "tool" else "required"


def _decode_text_format(text: Any) -> c.ResponseFormat | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    fmt = text["format"]
    kind = fmt.get("type")
    if kind == "json_schema":
        return c.ResponseFormat("json_schema", fmt.get("schema"), fmt.get("name"), fmt.get("strict"))
    if kind == "json_object":
        return c.ResponseFormat("json_object")
    return c.ResponseFormat("text")


def _encode_text_format(fmt: c.ResponseFormat | None) -> dict[str, Any]:
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    out: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response",
                           "schema": fmt.schema or {}}
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return out


def _effort_for_budget(budget: int) -> str:
    return "low" if budget <= 2048 else "medium" if budget <= 16384 else "high"


def _encode_reasoning(cfg: c.ReasoningConfig | None, meta: dict[str, Any]) -> dict[str, Any] | None:
    if cfg is None or not cfg.enabled:
        return None
    effort = cfg.effort or (_effort_for_budget(cfg.budget_tokens) if cfg.budget_tokens else None)
    out: dict[str, Any] = {}
    if effort:
        out["effort"] = effort
    summary = meta.get("reasoning_summary")
    if summary is None and cfg.include_thoughts:
        summary = "auto"
    if summary is not None:
        out["summary"] = summary
    return out or None


def instructions_of(request: c.Request) -> str | None:
    texts = [t.text for t in request.system if not (t.meta.get(NAME) or {}).get("role")]
    return "\n\n".join(texts) if texts else None


# ---------------------------------------------------------------------------- the format


class ResponsesFormat(Format):
    """OpenAI's Responses API: ``/v1/responses`` requests, answers and streams."""

    name = NAME

    # ------------------------------------------------------------------ client side

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = body.get("model") or path_model
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("'model' is required and must be a non-empty string.",
                                 param="model", code="missing_model")
        if "input" in body and not isinstance(body["input"], (str, list)):
            raise InvalidRequest("'input' must be a string or an array.", param="input")
        if not body.get("input") and not body.get("previous_response_id") \
                and not body.get("instructions"):
            raise InvalidRequest("'input' is required.", param="input")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        return model, stream

    def decode_request(self, request: ClientRequest) -> c.Request:
        body = request.body
        _, stream = self.inspect(body)
        decoder = InputDecoder()
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            decoder.messages.append(c.Message("user", [c.Text(raw_input)]))
        else:
            for item in raw_input or []:
                decoder.add(item)
        system: list[c.Text] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            system.append(c.Text(instructions))
        system.extend(decoder.system)
        tools = decode_tools(body.get("tools"))
        meta: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if k in body}
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") not in ("function", "custom"):
            meta["tool_choice"] = choice
        reasoning_raw = body.get("reasoning")
        reasoning = None
        if isinstance(reasoning_raw, dict):
            effort = reasoning_raw.get("effort")
            summary = reasoning_raw.get("summary")
            if "summary" in reasoning_raw:
                meta["reasoning_summary"] = summary
            reasoning = c.ReasoningConfig(
                enabled=effort != "none", effort=effort if effort != "none" else None,
                include_thoughts=summary not in (None, "none"),
            )
        text = body.get("text")
        if isinstance(text, dict) and text.get("verbosity"):
            meta["verbosity"] = text["verbosity"]
        metadata = body.get("metadata")
        return c.Request(
            model=request.model,
            messages=decoder.messages,
            system=system,
            tools=tools,
            tool_choice=_decode_tool_choice(choice),
            parallel_tool_calls=body.get("parallel_tool_calls"),
            max_tokens=body.get("max_output_tokens"),
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            response_format=_decode_text_format(text),
            reasoning=reasoning,
            stream=stream,
            user=body.get("user"),
            metadata=metadata if isinstance(metadata, dict) else {},
            meta={NAME: meta} if meta else {},
        )

    def response_object(
        self, response: c.Response, request: c.Request, *, status: str | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object for ``response`` (the endpoint may store it)."""
        if output is None:
            output = output_items(response, ToolIndex(request.tools))
        if status is None:
            status = response_status(response.stop_reason)
        incomplete = _INCOMPLETE.get(response.stop_reason or "")
        return response_shell(
            response.id, response.model, response.created, request, status=status,
            output=output, usage=usage_object(response.usage) if status != "in_progress" else None,
            incomplete=incomplete if status == "incomplete" else None,
            error=FAILED if status == "failed" else None,
        )

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return orjson.dumps(self.response_object(response, request))

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        from omniroute.formats.responses.stream import encode_stream

        return encode_stream(events, request)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps({"error": {"message": err.message, "type": err.type,
                                       "param": err.param, "code": err.code}})

    def error_frame(self, err: GatewayError) -> bytes:
        return encode({"type": "error", "code": err.code, "message": err.message,
                       "param": err.param, "sequence_number": 0}, event="error")

    def keepalive_frame(self) -> bytes | None:
        return b": keepalive\n\n"

    # ------------------------------------------------------------------ provider side

    def encode_request(self, request: c.Request,
                       client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        meta = request.meta.get(NAME) or {}
        tools = ToolIndex(request.tools)
        body: dict[str, Any] = {"model": request.model}
        instructions = instructions_of(request)
        if instructions is not None:
            body["instructions"] = instructions
        body["input"] = encode_input(request, tools)
        if request.tools:
            body["tools"] = encode_tools(request.tools)
        choice = _encode_tool_choice(request.tool_choice, tools, meta)
        if choice is not None:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        max_tokens = request.max_tokens or (client or {}).get("max_tokens")
        if max_tokens:
            body["max_output_tokens"] = max_tokens
        for name in ("temperature", "top_p", "user"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.metadata:
            body["metadata"] = request.metadata
        text: dict[str, Any] = {}
        if request.response_format is not None and request.response_format.type != "text":
            text["format"] = _encode_text_format(request.response_format)
        if meta.get("verbosity"):
            text["verbosity"] = meta["verbosity"]
        if text:
            body["text"] = text
        reasoning = _encode_reasoning(request.reasoning, meta)
        if reasoning:
            body["reasoning"] = reasoning
        for key in _PASSTHROUGH:
            if key in meta and key not in _SERVER_STATE:
                body[key] = meta[key]
        body.setdefault("store", False)
        if reasoning and body["store"] is False and "include" not in meta:
            body["include"] = ["reasoning.encrypted_content"]
        body["stream"] = request.stream
        return body

    def decode_response(self, body: bytes) -> c.Response:
        data = json_object(body)
        if data is None:
            raise UpstreamError("The upstream answered with a body that is not a JSON object.")
        if data.get("status") == "failed" or (isinstance(data.get("error"), dict)
                                              and data.get("object") != "response"):
            raise UpstreamError(error_message(data.get("error")) or "The upstream response failed.")
        return decode_response_object(data)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        from omniroute.formats.responses.stream import decode_stream

        return decode_stream(frames)

    # ------------------------------------------------------------------ pass-through lane

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The body with the model, minus reasoning items that carry another provider's
        reasoning (a history that went through it): their ``encrypted_content`` would be
        refused as invalid."""
        body = super().with_model(body, model)
        items = body.get("input")
        if not isinstance(items, list) or not any(_foreign(i) for i in items):
            return body
        return {**body, "input": [i for i in items if not _foreign(i)]}

    def usage_from_body(self, body: bytes) -> c.Usage:
        data = json_object(body)
        return usage_from_object(data.get("usage")) if data else c.Usage()

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        if b'"usage"' not in frame or (b"response.completed" not in frame
                                       and b"response.incomplete" not in frame
                                       and b"response.failed" not in frame):
            return None
        response = response_from_frame(frame)
        if response is None or not isinstance(response.get("usage"), dict):
            return None
        return usage_from_object(response["usage"])

    def error_from_frame(self, frame: bytes) -> str | None:
        if b"error" not in frame and b"response.failed" not in frame:
            return None
        data = frame_json(frame)
        if data is None:
            return None
        if data.get("type") == "error":
            return error_message(data) or "upstream stream error"
        if data.get("type") == "response.failed":
            response = data.get("response") or {}
            return error_message(response.get("error")) or "The upstream response failed."
        return None


# ---------------------------------------------------------------------------- response pieces


def _foreign(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "reasoning" and carry.is_packed(
        item.get("encrypted_content"))



def now() -> int:
    """The ``created_at`` of an answer whose upstream gave none."""
    return int(time.time())


def response_status(stop_reason: str | None) -> str:
    if stop_reason == "error":
        return "failed"
    return "incomplete" if stop_reason in _INCOMPLETE else "completed"


def response_shell(
    resp_id: str, model: str, created: int | None, request: c.Request, *, status: str,
    output: list[dict[str, Any]], usage: dict[str, Any] | None, incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full ``response`` object, echoing the request's settings as the API does."""
    meta = request.meta.get(NAME) or {}
    tools = ToolIndex(request.tools)
    choice = _encode_tool_choice(request.tool_choice, tools, meta)
    reasoning = _encode_reasoning(request.reasoning, meta) or {}
    text: dict[str, Any] = {"format": _encode_text_format(request.response_format)}
    if meta.get("verbosity"):
        text["verbosity"] = meta["verbosity"]
    created_at = created if created is not None else now()
    out = {
        "id": resp_id if resp_id.startswith("resp_") else "resp_" + resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": instructions_of(request),
        "max_output_tokens": request.max_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls
        if request.parallel_tool_calls is not None else True,
        "previous_response_id": meta.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": meta.get("store", True),
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": text,
        "tool_choice": choice if choice is not None else "auto",
        "tools": encode_tools(request.tools),
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": meta.get("truncation", "disabled"),
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata,
    }
    if status == "completed":
        out["completed_at"] = created_at
    return out


# ---------------------------------------------------------------------------- frames


def response_from_frame(frame: bytes) -> dict[str, Any] | None:
    """The ``response`` object a lifecycle event carries (``response.completed``…), or None."""
    data = frame_json(frame)
    if data is None or not isinstance(data.get("response"), dict):
        return None
    return data["response"]


@hookimpl
def register_formats(register: Any) -> None:
    register(ResponsesFormat)
