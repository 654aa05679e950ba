"""An example omniroute provider plugin: models that answer locally, with no network.

Provider type ``example`` (default prefix ``example/``) offers two models:

* ``echo`` replies with the text of the last user message;
* ``reverse`` replies with that text reversed.

Answers are in the exact OpenAI Chat Completions wire format: a ``chat.completion``
JSON object, or a stream of ``chat.completion.chunk`` server-sent events ending with
``data: [DONE]``. A "token" here is a whitespace-separated word.

Only ``omniroute``'s public surface (``omniroute.__all__``) and ``omniroute.sse`` are
used. The README of this distribution walks through every part of it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from omniroute import Provider, UpstreamCall, UpstreamResponse, UpstreamStatusError, hookimpl
from omniroute.sse import DONE, encode

__all__ = ["ExampleProvider", "register_providers"]

#: each model turns the last user message's text into the reply
_MODELS: dict[str, Callable[[str], str]] = {
    "echo": lambda text: text,
    "reverse": lambda text: text[::-1],
}

#: split before every word that follows whitespace: "a b  c" -> ["a ", "b  ", "c"]
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


class ExampleProvider(Provider):
    """Answers ``echo`` and ``reverse`` locally, in the OpenAI Chat Completions format."""

    type = "example"
    format = "openai"
    default_prefix = "example"
    description = "Example local provider: echo and reverse models (no network)"
    credential_fields = ()
    requires_credentials = False

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        # Validate everything *before* returning: an error raised here lets the gateway
        # try another target; one raised while streaming would reach the client.
        transform = _MODELS.get(call.model)
        if transform is None:
            raise UpstreamStatusError(
                f"The model {call.model!r} does not exist; this provider offers "
                f"{', '.join(_MODELS)}.",
                status=404, code="model_not_found", param="model")
        text = transform(last_user_text(call.body.get("messages") or []))
        usage = {
            "prompt_tokens": prompt_tokens(call.body.get("messages") or []),
            "completion_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-{call.request_id or secrets.token_hex(12)}"
        created = int(time.time())
        if not call.stream:
            body = completion(completion_id, created, call.model, text, usage)
            return UpstreamResponse(body=json.dumps(body, separators=(",", ":")).encode())
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = stream_events(completion_id, created, call.model, text,
                               usage if include_usage else None)
        return UpstreamResponse(events=events)

    async def list_models(self) -> list[str]:
        return list(_MODELS)


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    """Called once at start-up by omniroute's plugin manager."""
    register(ExampleProvider)


# ------------------------------------------------------------------ pure helpers


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of ``text`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(messages: list[Any]) -> str:
    """The text of the last ``user`` message ("" when there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    return sum(len(message_text(m.get("content")).split())
               for m in messages if isinstance(m, dict))


def completion(
    completion_id: str, created: int, model: str, text: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A ``chat.completion`` object, as OpenAI returns it."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": usage,
    }


async def stream_events(
    completion_id: str, created: int, model: str, text: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed answer, each complete, as bytes.

    Role first, then one content delta per word, then ``finish_reason``; with
    ``usage`` (the client sent ``stream_options.include_usage``) every chunk carries
    ``"usage": null`` and a last chunk with no choices carries the counts.
    """

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }
        if usage is not None:
            data["usage"] = None
        return encode(data)

    yield chunk({"role": "assistant", "content": ""})
    for word in _WORD_BOUNDARY.split(text):
        if word:
            yield chunk({"content": word})
    yield chunk({}, "stop")
    if usage is not None:
        yield encode({
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        })
    yield DONE
