"""OpenAI's audio API for the fake OpenAI upstream (``FakeOpenAI`` mixes it in).

* ``POST /v1/audio/transcriptions`` and ``/translations``: ``multipart/form-data``
  (``file``, ``model``, ``language``, ``prompt``, ``response_format``,
  ``temperature``, ``timestamp_granularities[]``), answered as the real API does:
  ``json`` is ``{"text", "usage"}`` (``whisper-1``: ``{"type": "duration",
  "seconds"}``, ``gpt-4o-*transcribe``: token usage), ``verbose_json`` adds
  ``task``, ``language`` (a name: ``"english"``), ``duration``, ``segments`` and,
  with ``timestamp_granularities[]=word``, ``words``; ``text``, ``srt`` and ``vtt``
  are ``text/plain`` bodies. The fake "hears" :data:`HEARD` (or the behaviour's
  ``text``), spread evenly over the file's length, which it measures with the
  ``wave`` module: a file that is not a WAV is refused like corrupt audio.
* ``POST /v1/audio/speech``: JSON (``model``, ``input``, ``voice``,
  ``response_format``, ``speed``) answered with audio bytes (:func:`spoken`),
  written in ``chunks`` pieces ``delay`` seconds apart (a paced fake), with the
  format's Content-Type.

Each pops the fake's ``script``; errors and the faults (hang, drop, slow) act as
for chat. The multipart body is parsed with the ``email`` package, independently
of the gateway's reader.
"""

from __future__ import annotations

import email
import email.policy
import io
import math
import wave
from typing import Any

import orjson
from aiohttp import web

from fakes.base import Recorded, split

#: what the fakes hear in any audio (tests compare answers against it)
HEARD = "Hello from the fake upstream. This is a test of speech to text."
TRANSCRIBE_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
                "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_INVALID = "invalid_request_error"
#: verbose_json names the language (Whisper's names)
_LANGUAGES = {"en": "english", "fr": "french", "de": "german", "es": "spanish"}


def parse_form(content_type: str, raw: bytes) -> tuple[dict[str, list[str]],
                                                      dict[str, tuple[str, str, bytes]]]:
    """``(fields, files)`` of a multipart body; files are ``(filename, type, data)``."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw, policy=email.policy.HTTP)
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple[str, str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (filename, part.get_content_type(), data)
        else:
            fields.setdefault(str(name), []).append(data.decode())
    return fields, files


def wav_length(data: bytes) -> float | None:
    """Seconds of a WAV file (the ``wave`` module's reading), or None when it is not one."""
    try:
        with wave.open(io.BytesIO(data)) as audio:
            return audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError):
        return None


def timed_words(text: str, seconds: float) -> list[tuple[str, float, float]]:
    """``text``'s words spread evenly over ``seconds``: ``(word, start, end)``."""
    words = text.split()
    step = seconds / max(1, len(words))
    return [(w, round(i * step, 3), round((i + 1) * step, 3)) for i, w in enumerate(words)]


def spoken(text: str, response_format: str) -> bytes:
    """The fake's audio for ``text``: a short header naming the format, then the text's
    bytes repeated (deterministic, so a test can compare what arrived)."""
    return f"FAKE-{response_format.upper()}:".encode() + text.encode() * 8


def _stamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    return (f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}"
            f"{decimal}{millis % 1000:03d}")


def _error(status: int, message: str, param: str | None = None,
           code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": _INVALID, "param": param,
                                        "code": code}}, status=status)


class OpenAIAudio:
    """The audio routes; mixed into ``FakeOpenAI`` (which has the script and the writers)."""

    def _audio_routes(self: Any) -> None:
        self.app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self.app.router.add_post("/v1/audio/translations", self._translations)
        self.app.router.add_post("/v1/audio/speech", self._speech)

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._listen(request, "transcribe")

    async def _translations(self, request: web.Request) -> web.StreamResponse:
        return await self._listen(request, "translate")

    async def _listen(self: Any, request: web.Request, task: str) -> web.StreamResponse:
        rec: Recorded = await self._record(request)
        b = self._next()
        if (early := await self._before(request, b)) is not None:
            return early
        if not request.content_type.startswith("multipart/form-data"):
            return _error(400, "Invalid Content-Type header; expected multipart/form-data.")
        fields, files = parse_form(request.headers["Content-Type"], rec.body)
        rec.json = {"fields": fields, "files": {k: (f[0], f[1], len(f[2]))
                                                for k, f in files.items()}}
        model = (fields.get("model") or [""])[-1]
        if "file" not in files:
            return _error(400, "you must provide a file", "file")
        if model not in (*TRANSCRIBE_MODELS, *self.models):
            return _error(404, f"The model `{model}` does not exist or you do not have access "
                               "to it.", code="model_not_found")
        filename, _, data = files["file"]
        if filename.rpartition(".")[2].lower() not in _EXTENSIONS:
            return _error(400, f"Invalid file format. Supported formats: {list(_EXTENSIONS)}",
                          "file", "invalid_value")
        seconds = wav_length(data)
        if seconds is None:
            return _error(400, "Audio file might be corrupted or unsupported", "file",
                          "invalid_value")
        response_format = (fields.get("response_format") or ["json"])[-1]
        whisper = model == "whisper-1" or model in self.models
        if response_format != "json" and not whisper:
            return _error(400, f"response_format '{response_format}' is not compatible with "
                               f"model '{model}'. Use 'json' or 'text' instead.",
                          "response_format", "unsupported_value")
        text = b.text if b.text is not None else HEARD
        if task == "translate":
            text = f"(in English) {text}"
        words = timed_words(text, seconds)
        body, content_type = self._transcript(task, response_format, text, words, seconds,
                                              fields, whisper)
        delay = self._delay(b)
        if delay:
            await self._sleep(request, delay * (b.chunks or self.chunks))
        return web.Response(body=body, headers={"Content-Type": content_type,
                                                "x-request-id": "req_audio"})

    @staticmethod
    def _transcript(task: str, response_format: str, text: str,
                    words: list[tuple[str, float, float]], seconds: float,
                    fields: dict[str, list[str]], whisper: bool) -> tuple[bytes, str]:
        plain = "text/plain; charset=utf-8"
        cues = [(" ".join(w for w, _, _ in words[i:i + 6]), words[i][1],
                 words[min(i + 6, len(words)) - 1][2]) for i in range(0, len(words), 6)]
        if response_format == "text":
            return (text + "\n").encode(), plain
        if response_format == "srt":
            return "".join(f"{n}\n{_stamp(a, ',')} --> {_stamp(z, ',')}\n{t}\n\n"
                           for n, (t, a, z) in enumerate(cues, 1)).encode(), plain
        if response_format == "vtt":
            return ("WEBVTT\n\n" + "".join(f"{_stamp(a, '.')} --> {_stamp(z, '.')}\n{t}\n\n"
                                           for t, a, z in cues)).encode(), plain
        usage: dict[str, Any] = {"type": "duration", "seconds": math.ceil(seconds)}
        if not whisper:
            tokens = max(1, len(text) // 4)
            usage = {"type": "tokens", "input_tokens": math.ceil(seconds * 10),
                     "output_tokens": tokens,
                     "total_tokens": math.ceil(seconds * 10) + tokens,
                     "input_token_details": {"text_tokens": 0,
                                             "audio_tokens": math.ceil(seconds * 10)}}
        if response_format == "json":
            return orjson.dumps({"text": text, "usage": usage}), "application/json"
        granularities = fields.get("timestamp_granularities[]") or ["segment"]
        code = (fields.get("language") or ["en"])[-1] if task == "transcribe" else "en"
        answer: dict[str, Any] = {"task": task, "language": _LANGUAGES.get(code, code),
                                  "duration": seconds, "text": text}
        if "segment" in granularities:
            answer["segments"] = [
                {"id": i, "seek": 0, "start": a, "end": z, "text": f" {t}", "tokens": [50364],
                 "temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.1,
                 "no_speech_prob": 0.01} for i, (t, a, z) in enumerate(cues)]
        if "word" in granularities:
            answer["words"] = [{"word": w, "start": a, "end": z} for w, a, z in words]
        answer["usage"] = usage
        return orjson.dumps(answer), "application/json"

    async def _speech(self: Any, request: web.Request) -> web.StreamResponse:
        rec: Recorded = await self._record(request)
        b = self._next()
        if (early := await self._before(request, b)) is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        model = body.get("model")
        if model not in (*SPEECH_MODELS, *self.models):
            return _error(404, f"The model `{model}` does not exist or you do not have access "
                               "to it.", code="model_not_found")
        if not isinstance(body.get("input"), str) or not body["input"]:
            return _error(400, "Missing required parameter: 'input'.", "input",
                          "missing_required_parameter")
        if body.get("voice") is None:
            return _error(400, "Missing required parameter: 'voice'.", "voice",
                          "missing_required_parameter")
        response_format = body.get("response_format", "mp3")
        audio = spoken(body["input"], response_format)
        frames = [piece.encode("latin-1")
                  for piece in split(audio.decode("latin-1"), b.chunks or self.chunks)]
        headers = {"Content-Type": SPEECH_TYPES.get(response_format, "audio/mpeg"),
                   "x-request-id": "req_speech"}
        return await self._send_stream(request, b, frames, headers,
                                       lambda sent: b"")
