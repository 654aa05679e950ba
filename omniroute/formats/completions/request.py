"""Completions requests -> canonical: the prompt as one user message, refusals for the rest."""

from __future__ import annotations

from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.completions.response import NAME

#: the API's default ``max_tokens`` for completions
DEFAULT_MAX_TOKENS = 16
_UNSUPPORTED = ("suffix", "logprobs")


def check_request(body: dict[str, Any]) -> tuple[str, bool]:
    """``(model, stream)`` of a completion request; what a chat model cannot do is refused."""
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


def decode_request(body: dict[str, Any], model: str, stream: bool) -> c.Request:
    """A checked completion request as a canonical chat request."""
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
