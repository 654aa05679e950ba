"""OpenAI's legacy Completions API (``POST /v1/completions``), client side only.

A completion request is served as a chat request: the ``prompt`` becomes one
user message, the answer's text comes back as ``choices[0].text`` of a
``text_completion`` object (or of stream chunks, closed by ``data: [DONE]``).
Like the API, ``max_tokens`` defaults to 16. What a chat model cannot do is
refused with a 400 instead of being silently ignored: several prompts in one
request, token-id prompts, ``n`` / ``best_of`` above 1, ``echo``, ``suffix``
and ``logprobs``.

No provider speaks this format, so every request takes the translated lane;
it is registered like every format, for its client routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from omniroute.errors import GatewayError, openai_error_body
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, ClientRoute, Format
from omniroute.formats.completions import request as completions_request
from omniroute.formats.completions import response as completions_response
from omniroute.formats.completions import stream as completions_stream
from omniroute.formats.completions.response import NAME
from omniroute.hookspecs import hookimpl
from omniroute.sse import encode

__all__ = ["NAME", "CompletionsFormat"]


class CompletionsFormat(Format):
    """``text_completion`` requests and answers, served by a chat model."""

    sse_comments = True  # the Stainless SSE decoder skips comment lines

    name = NAME
    client_routes = (
        ClientRoute("POST", "/v1/completions", "chat", "completions"),
        ClientRoute("POST", "/completions", "chat", "completions"),
    )

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        return completions_request.check_request(body)

    def decode_request(self, request: ClientRequest) -> c.Request:
        model, stream = self.inspect(request.body)
        return completions_request.decode_request(request.body, model, stream)

    def conversation_seed(self, body: dict[str, Any]) -> tuple[str | None, str | None]:
        prompt = body.get("prompt")
        return None, prompt if isinstance(prompt, str) else None

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return completions_response.encode_response(response)

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        include_usage = bool((request.meta.get(NAME) or {}).get("include_usage"))
        return completions_stream.encode_stream(events, include_usage)

    def error_body(self, err: GatewayError) -> bytes:
        return openai_error_body(err)

    def error_frame(self, err: GatewayError) -> bytes:
        return encode({"error": {"message": err.message, "type": err.type, "param": err.param,
                                 "code": err.code}})


@hookimpl
def register_formats(register: Callable[[type[Format]], None]) -> None:
    register(CompletionsFormat)
