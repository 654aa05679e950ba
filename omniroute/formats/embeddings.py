"""Reading embeddings request bodies: the checks every embeddings API shares.

The model, the input texts (one string or a list of strings, never token
arrays) and ``dimensions``; each format builds its own
:class:`~omniroute.formats.canonical.EmbedRequest` from them.
"""

from __future__ import annotations

from typing import Any

from omniroute.errors import InvalidRequest

#: the most inputs one request may embed (OpenAI's own limit)
MAX_INPUTS = 2048


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: the model to embed with.", param="model",
                             code="missing_model")
    return model


def inputs_of(value: Any, name: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise InvalidRequest(f"'{name}' must be a non-empty string or a non-empty list of "
                             "strings.", param=name, code="invalid_input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'{name}' holds {len(texts)} items; at most {MAX_INPUTS} may be "
                             "embedded at once.", param=name, code="too_many_inputs")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            got = "an empty string" if text == "" else type(text).__name__
            raise InvalidRequest(f"'{name}[{i}]' must be a non-empty string, got {got} "
                                 "(token arrays are not supported).", param=name,
                                 code="invalid_input")
    return texts


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return {}
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions",
                             code="invalid_dimensions")
    return {"dimensions": dimensions}
