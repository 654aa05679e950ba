"""Images from the fake Gemini API: Imagen's ``:predict``, and a Gemini image model's
``generateContent`` answering one ``inlineData`` image (``refused``: the safety filters'
reason, when they refuse)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fakes.base import ALNUM, fake_image, rand, tokens
from fakes.gemini_checks import (
    answer_json,
    bad_request,
    check_request,
    field,
    google_error,
    text_of,
    unknown_field,
)

IMAGEN_PARAMETERS = {"sampleCount", "aspectRatio", "personGeneration", "sampleImageSize",
                      "outputOptions", "includeRaiReason", "includeSafetyAttributes",
                      "guidanceScale", "safetySetting", "language"}
IMAGEN_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
#: output tokens of one 1024x1024 image of a Gemini image model
IMAGE_TOKENS = 1290


def predict(body: dict[str, Any], model: str, refused: str | None) -> web.Response:
    """Imagen's ``:predict``."""
    if not model.startswith("imagen"):
        return google_error(400, f"models/{model} does not support predict.")
    for name in body:
        if name not in ("instances", "parameters"):
            return unknown_field(name)
    instances, params = body.get("instances"), body.get("parameters") or {}
    prompt = instances[0].get("prompt") if isinstance(instances, list) and instances \
        and isinstance(instances[0], dict) else None
    if not isinstance(prompt, str) or not prompt:
        return bad_request("Prompt is required.", "instances[0].prompt")
    for name in params:
        if name not in IMAGEN_PARAMETERS:
            return unknown_field(name, "parameters")
    count = params.get("sampleCount", 4)
    if not isinstance(count, int) or not 1 <= count <= 4:
        return bad_request("sampleCount must be between 1 and 4.", "parameters.sampleCount")
    if params.get("aspectRatio", "1:1") not in IMAGEN_RATIOS:
        return bad_request("Unsupported aspect ratio.", "parameters.aspectRatio")
    if refused is not None:
        return answer_json(200, {"predictions": [{"raiFilteredReason": refused}]})
    mime = (params.get("outputOptions") or {}).get("mimeType", "image/png")
    return answer_json(200, {"predictions": [{"mimeType": mime,
                                        "bytesBase64Encoded": fake_image(prompt, i)}
                                       for i in range(count)]})


def image_content(body: dict[str, Any], model: str, refused: str | None) -> web.Response:
    """A Gemini image model's ``generateContent``: one image."""
    if model.startswith("imagen"):
        return google_error(400, f"models/{model} is not supported for generateContent.")
    if (problem := check_request(body, model)) is not None:
        return problem
    config = field(body, "generationConfig") or {}
    if "IMAGE" not in [m.upper() for m in field(config, "responseModalities") or []]:
        return answer_json(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"text": "I can describe it, but you did not ask for an image."}]},
            "finishReason": "STOP", "index": 0}]})
    prompt = text_of(body["contents"][-1])
    used = tokens(prompt)
    if refused is not None:
        return answer_json(200, {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}],
                           "usageMetadata": {"promptTokenCount": used,
                                             "totalTokenCount": used}})
    return answer_json(200, {
        "candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": fake_image(prompt)}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": used, "candidatesTokenCount": IMAGE_TOKENS,
                          "totalTokenCount": used + IMAGE_TOKENS,
                          "candidatesTokensDetails": [{"modality": "IMAGE",
                                                       "tokenCount": IMAGE_TOKENS}]},
        "modelVersion": model, "responseId": rand(22, ALNUM)})
