"""OpenAI's legacy Completions API (``POST /v1/completions``), client side only.

A completion request is served as a chat request: the ``prompt`` becomes one
user message, the answer's text comes back as ``choices[0].text`` of a
``text_completion`` object (or of stream chunks, closed by ``data: [DONE]``).
Like the API, ``max_tokens`` defaults to 16. What a chat model cannot do is
refused with a 400 instead of being silently ignored: several prompts in one
request, token-id prompts, ``n`` / ``best_of`` above 1, ``echo``, ``suffix``
and ``logprobs``.

No provider speaks this format, so every request takes the translated lane;
the format is not registered as a plugin (``web.client`` uses it directly).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, openai_error_body
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.sse import DONE, encode

NAME = "completions"
#: the API's default ``max_tokens`` for completions
DEFAULT_MAX_TOKENS = 16
_FINISH = {"max_tokens": "length", "content_filter": "content_filter",
           "refusal": "content_filter"}
_UNSUPPORTED = ("suffix", "logprobs")


class CompletionsFormat(Format):
    """``text_completion`` requests and answers, served by a chat model."""

    name = NAME

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("'model' is required and must be a non-empty string.",
                                 param="model", code="missing_model")
        _prompt(body)
        for name in ("n", "best_of"):
            value = body.get(name)
            if value not in (None, 1):
                raise InvalidRequest(f"'{name}' above 1 is not supported: this gateway serves "
                                     "completions with chat models, one choice each.",
                                     param=name, code="unsupported_parameter")
        if body.get("echo"):
            raise InvalidRequest("'echo' is not supported by this gateway.", param="echo",
                                 code="unsupported_parameter")
        for name in _UNSUPPORTED:
            if body.get(name) not in (None, 0, ""):
                raise InvalidRequest(f"'{name}' is not supported by this gateway.", param=name,
                                     code="unsupported_parameter")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        return model, stream

    def decode_request(self, request: ClientRequest) -> c.Request:
        body = request.body
        model, stream = self.inspect(body)
        stop = body.get("stop")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        max_tokens = body.get("max_tokens")
        return c.Request(
            model=model,
            messages=[c.Message("user", [c.Text(_prompt(body))])],
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            stop=[stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)],
            seed=body.get("seed"),
            presence_penalty=body.get("presence_penalty"),
            frequency_penalty=body.get("frequency_penalty"),
            stream=stream,
            user=body.get("user") if isinstance(body.get("user"), str) else None,
            meta={NAME: {"include_usage": include_usage}},
        )

    def conversation_seed(self, body: dict[str, Any]) -> tuple[str | None, str | None]:
        prompt = body.get("prompt")
        return None, prompt if isinstance(prompt, str) else None

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        text = "".join(p.text for p in response.parts if isinstance(p, c.Text))
        return orjson.dumps({
            "id": _completion_id(response.id),
            "object": "text_completion",
            "created": response.created or int(time.time()),
            "model": response.model,
            "choices": [_choice(text, _FINISH.get(response.stop_reason or "", "stop"))],
            "usage": _usage(response.usage),
        })

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        return _encode_stream(events, bool((request.meta.get(NAME) or {}).get("include_usage")))

    def error_body(self, err: GatewayError) -> bytes:
        return openai_error_body(err)

    def error_frame(self, err: GatewayError) -> bytes:
        return encode({"error": {"message": err.message, "type": err.type, "param": err.param,
                                 "code": err.code}})


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
        raise InvalidRequest("Several prompts in one request are not supported: send one "
                             "request per prompt.", param="prompt", code="unsupported_parameter")
    raise InvalidRequest("'prompt' is required: a string (token-id prompts are not supported).",
                         param="prompt")


def _completion_id(upstream_id: str) -> str:
    return "cmpl-" + upstream_id.removeprefix("chatcmpl-").removeprefix("cmpl-")


def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def _usage(usage: c.Usage) -> dict[str, int]:
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _encode_stream(events: AsyncIterator[c.Event],
                         include_usage: bool) -> AsyncIterator[bytes]:
    head: dict[str, Any] = {"id": "cmpl-", "object": "text_completion",
                            "created": int(time.time()), "model": ""}
    usage = c.Usage()
    async with aclosing(events):
        async for event in events:
            if isinstance(event, c.Start):
                head.update(id=_completion_id(event.id), model=event.model,
                            created=event.created or head["created"])
                usage.merge(event.usage)
            elif isinstance(event, c.TextDelta) and event.text:
                yield encode({**head, "choices": [_choice(event.text, None)]})
            elif isinstance(event, c.Finish):
                usage.merge(event.usage)
                finish = _FINISH.get(event.stop_reason or "", "stop")
                yield encode({**head, "choices": [_choice("", finish)]})
                if include_usage:
                    yield encode({**head, "choices": [], "usage": _usage(usage)})
    yield DONE
