"""Fake Deepgram upstream: the pre-recorded ``/v1/listen`` API and ``/v1/models``.

``POST /v1/listen?model=nova-3&smart_format=true&language=en`` (or
``detect_language=true``; ``utterances=true``) takes the raw audio as the body,
with an audio Content-Type, and ``Authorization: Token KEY``. It answers
Deepgram's real shape: ``metadata`` (``request_id``, ``sha256``, ``created``,
``duration``, ``channels``, ``models``, ``model_info``) and ``results.channels[0]
.alternatives[0]`` (``transcript``, ``confidence``, ``words`` with
``punctuated_word``), ``detected_language`` when detection was asked for, and
``results.utterances`` when they were. What it hears is ``fakes.openai_audio.HEARD``
(or the behaviour's ``text``) spread evenly over the WAV's length (``wave``).
Usage::

    fake = FakeDeepgram()
    fake.script.append(error(429))
    server = await aiohttp_server(fake.app)

Refusals, in Deepgram's error shape ``{"err_code", "err_msg", "request_id"}``: no
key or a wrong one (401 ``INVALID_AUTH``), an unknown model (400), a body that is
not audio it can decode (400 "corrupt or unsupported data"). ``script`` pops one
``Behaviour`` per listen request (``error(status)``, ``hang_before_headers``,
``slow``...), as in every fake (``fakes.base``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import FakeUpstream, Recorded, fault_helpers, json_response
from fakes.openai_audio import HEARD, timed_words, wav_length

__all__ = ["STT_MODELS", "Behaviour", "FakeDeepgram", "error", "garbage",
           "hang_before_headers", "slow"]

STT_MODELS = ("nova-3", "nova-2", "whisper-large")
Behaviour = base.Behaviour
hang_before_headers, _, _, garbage, slow = fault_helpers(Behaviour)
_MESSAGES = {429: "Too many requests. Please try again later.",
             500: "An internal server error occurred.", 503: "Service unavailable."}
_CODES = {400: "Bad Request", 401: "INVALID_AUTH", 402: "ASR_PAYMENT_REQUIRED",
          403: "INSUFFICIENT_PERMISSIONS", 429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR",
          503: "SERVICE_UNAVAILABLE"}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    return {"err_code": _CODES.get(status, "Bad Request"),
            "err_msg": message or _MESSAGES.get(status, f"Fake Deepgram error {status}"),
            "request_id": str(uuid.uuid4())}


def error(status: int, message: str | None = None,
          headers: dict[str, str] | None = None) -> Behaviour:
    return Behaviour(status=status, error=error_body(status, message),
                     headers=dict(headers or {}))


class FakeDeepgram(FakeUpstream[Behaviour]):
    """In-process fake of Deepgram's speech-to-text API (see the module)."""

    behaviour = Behaviour
    key_in = ("token",)

    def __init__(self, *, api_key: str | None = "dg-upstream-test",
                 models: Sequence[str] = STT_MODELS, **knobs: Any) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.app.router.add_post("/v1/listen", self._handle)
        self.app.router.add_get("/v1/models", self._models)

    def _auth_missing(self) -> web.Response:
        return json_response(401, error_body(401, "Invalid credentials."))

    def _failure(self, status: int) -> Behaviour:
        return error(status)

    def _error_body(self, b: Behaviour) -> Any:
        return b.error

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        stt = [{"name": f"{m}-general", "canonical_name": m, "architecture": m.split("-")[0],
                "languages": ["en", "es"], "version": "2025-01-01.0", "uuid": str(uuid.uuid4()),
                "batch": True, "streaming": True, "formatted_output": True} for m in self.models]
        return json_response(200, {"stt": stt, "tts": []})

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        query = request.query
        model = query.get("model", "base")
        if model not in self.models:
            return json_response(400, error_body(400, "No such model/language/tier combination "
                                                      "found. Please check the documentation."))
        if b.garbage is not None:
            return self._garbage(b, stream=False)
        seconds = wav_length(rec.body)
        if seconds is None or not request.content_type.startswith(("audio/", "application/")):
            return json_response(400, error_body(
                400, "Bad Request: failed to process audio: corrupt or unsupported data"))
        text = b.text if b.text is not None else HEARD
        words = [{"word": w.strip(".,?!").lower(), "start": a, "end": z, "confidence": 0.99,
                  "punctuated_word": w} for w, a, z in timed_words(text, seconds)]
        channel: dict[str, Any] = {"alternatives": [
            {"transcript": text, "confidence": 0.99, "words": words}]}
        if query.get("detect_language") == "true":
            channel["detected_language"] = "en"
            channel["language_confidence"] = 0.97
        model_id = str(uuid.uuid4())
        answer: dict[str, Any] = {
            "metadata": {
                "transaction_key": "deprecated", "request_id": str(uuid.uuid4()),
                "sha256": hashlib.sha256(rec.body).hexdigest(),
                "created": "2025-06-01T12:00:00.000Z", "duration": seconds, "channels": 1,
                "models": [model_id],
                "model_info": {model_id: {"name": f"general-{model}", "version": "2025-01-01.0",
                                          "arch": model}}},
            "results": {"channels": [channel]}}
        if query.get("utterances") == "true":
            answer["results"]["utterances"] = _utterances(words)
        return await self._send_whole(request, b, orjson.dumps(answer))


def _utterances(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Utterances: the words cut after each sentence's last word."""
    out: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for word in words:
        current.append(word)
        if word["punctuated_word"].endswith((".", "?", "!")) or word is words[-1]:
            out.append({"start": current[0]["start"], "end": current[-1]["end"],
                        "confidence": 0.99, "channel": 0,
                        "transcript": " ".join(w["punctuated_word"] for w in current),
                        "words": list(current), "id": str(uuid.uuid4())})
            current = []
    return out
