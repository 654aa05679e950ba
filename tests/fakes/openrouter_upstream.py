"""Fake OpenRouter: image generation through ``POST /api/v1/chat/completions``.

OpenRouter has no ``/images/generations`` endpoint (a 404 here too); an image model
makes images when the request has ``modalities`` with ``"image"``, and answers them in
``choices[0].message.images[]`` as ``{"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}`` beside the text (``content``), with token ``usage``
(https://openrouter.ai/docs/features/multimodal/image-generation). ``image_config``
(``aspect_ratio``, ``image_size``) is checked against the documented values. Usage::

    fake = FakeOpenRouter()
    server = await aiohttp_server(fake.app)
    base_url = str(server.make_url("/api/v1"))

One image a request: ``fake_image(prompt)`` (``fakes.base``). ``IMAGE_CHAT_MODELS``
answer images; the other ``models`` answer text only and refuse ``modalities`` with
"image" (404 "No endpoints found", as OpenRouter does). Errors are OpenRouter's
``{"error": {"code": <status>, "message"}}``. ``script`` pops one ``Behaviour`` a chat
request (``error()``, ``hang_before_headers()``); faults, ``requests`` as in every fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from fakes import base
from fakes.base import FakeUpstream, Recorded, fake_image, fault_helpers, json_response, tokens

__all__ = ["IMAGE_CHAT_MODELS", "IMAGE_TOKENS", "FakeOpenRouter", "error",
           "hang_before_headers"]

IMAGE_CHAT_MODELS = ("google/gemini-2.5-flash-image",)
#: completion tokens an image costs (Gemini image models: 1290)
IMAGE_TOKENS = 1290
_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
_SIZES = ("1K", "2K", "4K")


def error(status: int, message: str | None = None) -> base.Behaviour:
    return base.Behaviour(status=status, error={
        "code": status, "message": message or f"Fake OpenRouter error {status}"})


hang_before_headers = fault_helpers(base.Behaviour)[0]


def _error(status: int, message: str) -> web.Response:
    return json_response(status, {"error": {"code": status, "message": message}})


class FakeOpenRouter(FakeUpstream[base.Behaviour]):
    """OpenRouter's Chat Completions with image output (see the module docstring)."""

    key_in = ("bearer",)

    def __init__(self, *, api_key: str | None = "sk-or-v1-fake",
                 models: Sequence[str] = (*IMAGE_CHAT_MODELS, "openai/gpt-4o-mini"),
                 **knobs: Any) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.app.router.add_post("/api/v1/chat/completions", self._handle)

    def _auth_missing(self) -> web.Response:
        return _error(401, "No auth credentials found")

    def _auth_wrong(self, key: str) -> web.Response:
        return _error(401, "User not found.")

    def _failure(self, status: int) -> base.Behaviour:
        return error(status, "Internal Server Error")

    async def _serve(self, request: web.Request, rec: Recorded,
                     b: base.Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        model, messages = body.get("model"), body.get("messages")
        if model not in self.models:
            return _error(400, f"{model} is not a valid model ID")
        if not isinstance(messages, list) or not messages:
            return _error(400, "Input required: specify \"prompt\" or \"messages\"")
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        prompt = last.get("content") if isinstance(last.get("content"), str) else ""
        modalities = body.get("modalities") or ["text"]
        images = "image" in modalities
        if images and model not in IMAGE_CHAT_MODELS:
            return _error(404, "No endpoints found that support the requested output "
                          "modalities: " + ", ".join(modalities))
        config = body.get("image_config") or {}
        if not isinstance(config, dict) or set(config) - {"aspect_ratio", "image_size"} \
                or config.get("aspect_ratio", "1:1") not in _RATIOS \
                or config.get("image_size", "1K") not in _SIZES:
            return _error(400, f"Invalid image_config: {config!r}")
        message: dict[str, Any] = {"role": "assistant", "content": "Here is your image."
                                   if images else f"Hello! You said: {prompt}"}
        completion = tokens(message["content"])
        if images:
            message["images"] = [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + fake_image(prompt)}}]
            completion += IMAGE_TOKENS
        used = tokens(prompt)
        return json_response(200, {
            "id": "gen-fake", "provider": "Google", "model": model, "object": "chat.completion",
            "created": 1760000000,
            "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "STOP",
                         "logprobs": None, "message": message}],
            "usage": {"prompt_tokens": used, "completion_tokens": completion,
                      "total_tokens": used + completion}})
