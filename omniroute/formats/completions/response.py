"""Completions answers: ``text_completion`` objects from canonical answers."""

from __future__ import annotations

import time
from typing import Any

import orjson

from omniroute.formats import canonical as c

NAME = "completions"
FINISH = {"max_tokens": "length", "content_filter": "content_filter",
          "refusal": "content_filter"}


def encode_response(response: c.Response) -> bytes:
    text = "".join(p.text for p in response.parts if isinstance(p, c.Text))
    return orjson.dumps({
        "id": completion_id(response.id),
        "object": "text_completion",
        "created": response.created or int(time.time()),
        "model": response.model,
        "choices": [choice(text, FINISH.get(response.stop_reason or "", "stop"))],
        "usage": usage_object(response.usage),
    })


def completion_id(upstream_id: str) -> str:
    return "cmpl-" + upstream_id.removeprefix("chatcmpl-").removeprefix("cmpl-")


def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def usage_object(usage: c.Usage) -> dict[str, int]:
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
