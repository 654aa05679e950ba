"""OpenAI's ``POST /v1/embeddings``: ``{model, input, dimensions?, encoding_format?}``."""

from __future__ import annotations

import base64
import struct
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.embeddings import inputs_of, model_of, options_of


def decode_request(body: dict[str, Any]) -> c.EmbedRequest:
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.",
                             param="encoding_format", code="invalid_encoding_format")
    return c.EmbedRequest(model_of(body), inputs_of(body.get("input"), "input"),
                          options_of(body), encoding)


def encode_answer(request: c.EmbedRequest, vectors: list[list[float]], tokens: int
                  ) -> dict[str, Any]:
    def encoded(vector: list[float]) -> Any:
        if request.encoding == "base64":  # little-endian float32, as the API sends it
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {"object": "list", "model": request.model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
