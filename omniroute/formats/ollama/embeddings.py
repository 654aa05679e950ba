"""Ollama's ``POST /api/embed`` (a list of inputs) and legacy ``POST /api/embeddings``.

- ``/api/embed``: ``{model, input: str or [str], dimensions?}`` ->
  ``{model, embeddings, total_duration, load_duration, prompt_eval_count}``
- ``/api/embeddings``: ``{model, prompt}`` -> ``{embedding}``
"""

from __future__ import annotations

from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.embeddings import inputs_of, model_of, options_of

#: the request log's name of the legacy route (it shapes request and answer)
LEGACY = "ollama.embeddings"


def decode_request(body: dict[str, Any], endpoint: str) -> c.EmbedRequest:
    if endpoint != LEGACY:
        return c.EmbedRequest(model_of(body), inputs_of(body.get("input"), "input"),
                              options_of(body))
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        raise InvalidRequest("'prompt' is one string; POST /api/embed embeds a list.",
                             param="prompt", code="invalid_input")
    return c.EmbedRequest(model_of(body), inputs_of(prompt, "prompt"), options_of(body))


def encode_answer(request: c.EmbedRequest, vectors: list[list[float]], tokens: int,
                  elapsed_ns: int, endpoint: str) -> dict[str, Any]:
    if endpoint == LEGACY:
        return {"embedding": vectors[0]}
    return {"model": request.model, "embeddings": vectors, "total_duration": elapsed_ns,
            "load_duration": 0, "prompt_eval_count": tokens}
