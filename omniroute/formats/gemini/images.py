"""Images from the Gemini API: Imagen's ``:predict`` and the Gemini image models.

Imagen (``imagen-*`` models): ``POST models/{model}:predict`` with
``{"instances": [{"prompt"}], "parameters": {"sampleCount", "aspectRatio",
"personGeneration", "sampleImageSize", "outputOptions": {"mimeType"},
"includeRaiReason"}}``; the answer is ``{"predictions": [{"bytesBase64Encoded",
"mimeType"} | {"raiFilteredReason"}]}``. It takes an aspect ratio, not a size:
``size`` becomes the nearest ratio Imagen offers. (Fields as google-genai's
``generate_images`` sends them to the Gemini API: python-genai
``google/genai/models.py``, ``_GenerateImagesConfig_to_mldev``,
``_GeneratedImage_from_mldev``; https://ai.google.dev/gemini-api/docs/imagen.)

Gemini image models (``gemini-*-image*``): ``generateContent`` with
``generationConfig.responseModalities: ["IMAGE"]`` (images only, no text) and
``imageConfig.aspectRatio``; each image comes back as an ``inlineData`` part,
one per call, with token usage (https://ai.google.dev/gemini-api/docs/image-generation).

A prompt the safety filters refused is a 400 ``content_policy_violation``, the
client's to change (as OpenAI answers it); an answer with no image and no reason
is the upstream's failure.
"""

from __future__ import annotations

from typing import Any

import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats.gemini.parts import usage_from_metadata
from omniroute.formats.images import nearest_ratio

IMAGEN_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
GEMINI_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
#: finish and block reasons that mean the safety filters stopped the image
_REFUSED = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT", "SPII", "OTHER"})


def is_imagen(model: str) -> bool:
    return model.removeprefix("models/").startswith("imagen")


def _ratio(request: c.ImageRequest, ratios: tuple[str, ...]) -> str | None:
    asked = request.options.get("aspect_ratio")
    if isinstance(asked, str):
        return asked
    if request.size is None or request.size == "auto":
        return None
    return nearest_ratio(*request.dimensions(), ratios)


# ----------------------------------------------------------------------------- Imagen

def predict_request(request: c.ImageRequest) -> dict[str, Any]:
    params: dict[str, Any] = {"sampleCount": request.n, "includeRaiReason": True}
    ratio = _ratio(request, IMAGEN_RATIOS)
    if ratio is not None:
        params["aspectRatio"] = ratio
    options = request.options
    if isinstance(options.get("person_generation"), str):
        params["personGeneration"] = options["person_generation"]
    if isinstance(options.get("image_size"), str):
        params["sampleImageSize"] = options["image_size"]
    mime = _MIME.get(str(options.get("output_format", "")).lower())
    if mime is not None:
        params["outputOptions"] = {"mimeType": mime}
    return {"instances": [{"prompt": request.prompt}], "parameters": params}


def predict_answer(body: bytes) -> c.ImageResult:
    data = _json(body)
    images, refused = [], []
    predictions = data.get("predictions")
    for item in predictions if isinstance(predictions, list) else ():
        if not isinstance(item, dict):
            continue
        encoded = item.get("bytesBase64Encoded")
        if isinstance(encoded, str) and encoded:
            mime, prompt = item.get("mimeType"), item.get("prompt")
            images.append(c.GeneratedImage(
                data=encoded, media_type=mime if isinstance(mime, str) else None,
                revised_prompt=prompt if isinstance(prompt, str) else None))
        elif isinstance(item.get("raiFilteredReason"), str):
            refused.append(item["raiFilteredReason"])
    if not images:
        _refused(body, refused, "upstream sent an Imagen answer without any image")
    return c.ImageResult(images)


# ----------------------------------------------------------------------------- Gemini models

def content_request(request: c.ImageRequest) -> dict[str, Any]:
    config: dict[str, Any] = {"responseModalities": ["IMAGE"]}
    ratio = _ratio(request, GEMINI_RATIOS)
    if ratio is not None:
        config["imageConfig"] = {"aspectRatio": ratio}
    return {"contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": config}


def content_answer(body: bytes) -> c.ImageResult:
    """One ``generateContent`` answer: its ``inlineData`` images, and its token usage."""
    data = _json(body)
    images, refused = [], []
    feedback = data.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        refused.append(feedback["blockReason"])
    candidates = data.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        if not isinstance(candidate, dict):
            continue
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            inline = part.get("inlineData") or part.get("inline_data") \
                if isinstance(part, dict) else None
            if isinstance(inline, dict) and isinstance(inline.get("data"), str):
                mime = inline.get("mimeType") or inline.get("mime_type")
                images.append(c.GeneratedImage(
                    data=inline["data"], media_type=mime if isinstance(mime, str) else None))
        if candidate.get("finishReason") in _REFUSED:
            refused.append(str(candidate["finishReason"]))
    if not images:
        _refused(body, refused, "upstream sent a Gemini answer without any image")
    return c.ImageResult(images, usage_from_metadata(data.get("usageMetadata")))


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream sent a response that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("upstream sent a malformed image answer")
    return data


def _refused(body: bytes, reasons: list[str], otherwise: str) -> None:
    """Raise: a 400 when the safety filters removed the images, else the upstream's failure."""
    if reasons:
        raise UpstreamStatusError(
            "The upstream's safety filters refused this prompt: " + "; ".join(reasons),
            status=400, type="invalid_request_error", code="content_policy_violation",
            param="prompt", body=body)
    raise UpstreamError(otherwise)
