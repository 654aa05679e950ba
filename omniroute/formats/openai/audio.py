"""OpenAI's audio API: ``/v1/audio/transcriptions``, ``/translations`` and ``/speech``.

Transcriptions and translations are ``multipart/form-data``: ``file``, ``model``,
``language`` (transcriptions), ``prompt``, ``response_format`` (``json``, ``text``,
``srt``, ``verbose_json``, ``vtt``), ``temperature`` and
``timestamp_granularities[]`` (``word``, ``segment``; only with ``verbose_json``).
The ``json`` and ``verbose_json`` answers carry ``text``, ``task``, ``language`` and
``duration`` (the gateway's shape; OpenAI's own ``json`` has ``text`` and
``usage``); ``text`` is ``text/plain``, ``srt`` ``text/plain`` as OpenAI sends it,
``vtt`` ``text/vtt``. Speech is JSON (``model``, ``input``, ``voice``,
``response_format``, ``speed``) answered with the audio bytes.

Sources: platform.openai.com/docs/api-reference/audio, and the types of the
openai-python SDK (``types/audio/``).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from omniroute.errors import InvalidRequest, UpstreamError
from omniroute.formats.audio import (
    AudioCodec,
    Segment,
    SpeechRequest,
    TranscribeRequest,
    Transcript,
    Transcription,
    wav_seconds,
)
from omniroute.formats.canonical import token_count
from omniroute.formats.forms import Form, Upload
from omniroute.formats.subtitles import last_end, segments_from_words, srt, vtt

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
#: the file types OpenAI's transcription endpoints take, by extension
AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
#: extensions told by a content type when the file name has none
_EXTENSION_OF = {
    "audio/flac": "flac", "audio/x-flac": "flac", "audio/mp4": "m4a", "audio/m4a": "m4a",
    "audio/x-m4a": "m4a", "audio/mpeg": "mp3", "audio/mp3": "mp3", "video/mp4": "mp4",
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/wav": "wav", "audio/x-wav": "wav",
    "audio/wave": "wav", "audio/webm": "webm", "video/webm": "webm",
}
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
                "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
_TEXT_TYPES = {"text": "text/plain; charset=utf-8", "srt": "text/plain; charset=utf-8",
               "vtt": "text/vtt; charset=utf-8"}
_JSON = "application/json"


class OpenAIAudio(AudioCodec):
    """The audio endpoints of OpenAI's API (see the module)."""

    # ------------------------------------------------------------------ transcriptions

    def transcription(self, form: Form, task: str) -> TranscribeRequest:
        model = form.text("model")
        if not model or not model.strip():
            raise InvalidRequest("'model' is required: the model to transcribe with.",
                                 param="model", code="missing_model")
        upload = form.files.get("file")
        if upload is None:
            sent = "a text field" if "file" in form.fields else "nothing"
            raise InvalidRequest(f"'file' is required: the audio file to transcribe, as a file "
                                 f"part of the multipart form (got {sent}).", param="file",
                                 code="missing_file")
        upload = _audio_file(upload)
        _no_stream(form.text("stream"))
        response_format = form.text("response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise InvalidRequest(f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}"
                                 f"; got {response_format!r}.", param="response_format",
                                 code="invalid_response_format")
        granularities = tuple(form.fields.get("timestamp_granularities[]", [])
                              + form.fields.get("timestamp_granularities", []))
        for value in granularities:
            if value not in GRANULARITIES:
                raise InvalidRequest(f"'timestamp_granularities[]' values are 'word' or "
                                     f"'segment'; got {value!r}.",
                                     param="timestamp_granularities", code="invalid_value")
        if granularities and response_format != "verbose_json":
            raise InvalidRequest("'timestamp_granularities[]' needs 'response_format' "
                                 "'verbose_json'.", param="timestamp_granularities",
                                 code="invalid_value")
        temperature = _number(form.text("temperature"), "temperature", 0.0, 1.0)
        fields = {name: values for name, values in form.fields.items() if name != "model"}
        return TranscribeRequest(model.strip(), upload, task, response_format,
                                 form.text("language") or None, form.text("prompt"),
                                 temperature, granularities, fields)

    def transcript(self, request: TranscribeRequest, transcript: Transcript) -> Transcription:
        seconds = transcript.duration
        fmt = request.response_format
        if fmt in ("srt", "vtt"):
            segments = _segments(transcript)
            text = srt(segments) if fmt == "srt" else vtt(segments)
            return Transcription(text.encode(), _TEXT_TYPES[fmt], seconds)
        if fmt == "text":
            return Transcription((transcript.text + "\n").encode(), _TEXT_TYPES[fmt], seconds)
        answer: dict[str, Any] = {"task": request.task, "language": transcript.language,
                                  "duration": seconds, "text": transcript.text}
        if fmt == "verbose_json":
            wanted = request.granularities or ("segment",)
            if "segment" in wanted:
                answer["segments"] = [_segment(i, s) for i, s in enumerate(_segments(transcript))]
            if "word" in wanted:
                answer["words"] = [{"word": w.text, "start": w.start, "end": w.end}
                                   for w in transcript.words]
        if seconds is not None:
            answer["usage"] = {"type": "duration", "seconds": seconds}
        return Transcription(orjson.dumps(answer), _JSON, seconds)

    def relayed(self, request: TranscribeRequest, body: bytes,
                content_type: str) -> Transcription:
        fmt = request.response_format
        seconds: float | None = None
        if fmt not in ("json", "verbose_json"):
            seconds = wav_seconds(request.file.data)
            if seconds is None and fmt in ("srt", "vtt"):
                seconds = last_end(body)  # where the speech ends: the least it lasted
            kept = content_type if content_type.startswith("text/") else _TEXT_TYPES[fmt]
            return Transcription(body, kept, seconds)
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise UpstreamError("upstream sent a transcription that is not a JSON object "
                                "with 'text'")
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        billed: float | None = None  # what the upstream charges (whisper: whole seconds)
        tokens_in = tokens_out = None
        if usage.get("type") == "tokens":
            tokens_in = token_count(usage.get("input_tokens"))
            tokens_out = token_count(usage.get("output_tokens"))
        elif _positive(usage.get("seconds")):
            billed = float(usage["seconds"])
        duration = (float(data["duration"]) if _positive(data.get("duration"))
                    else wav_seconds(request.file.data) or billed)
        shaped = {"text": data["text"], "task": data.get("task") or request.task,
                  "language": data.get("language") or request.language, "duration": duration,
                  **{k: v for k, v in data.items() if k not in ("text", "task", "language",
                                                                 "duration")}}
        return Transcription(orjson.dumps(shaped), _JSON,
                             billed if billed is not None else duration, tokens_in, tokens_out)

    # ------------------------------------------------------------------ speech

    def speech(self, body: dict[str, Any]) -> SpeechRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("'model' is required: the model to speak with.",
                                 param="model", code="missing_model")
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise InvalidRequest("'input' is required: the text to turn into speech.",
                                 param="input", code="invalid_input")
        voice = body.get("voice")
        if voice is not None and not isinstance(voice, str) and not (
                isinstance(voice, dict) and isinstance(voice.get("id"), str)):
            raise InvalidRequest("'voice' must be a voice name or {\"id\": ...}.", param="voice",
                                 code="invalid_voice")
        response_format = body.get("response_format") or "mp3"
        if response_format not in SPEECH_TYPES:
            raise InvalidRequest(f"'response_format' must be one of {', '.join(SPEECH_TYPES)}; "
                                 f"got {response_format!r}.", param="response_format",
                                 code="invalid_response_format")
        speed = body.get("speed")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float))
                                  or not 0.25 <= speed <= 4.0):
            raise InvalidRequest("'speed' must be a number from 0.25 to 4.0.", param="speed",
                                 code="invalid_speed")
        extra = {k: v for k, v in body.items()
                 if k not in ("model", "input", "voice", "response_format", "speed")}
        return SpeechRequest(model.strip(), text, voice, response_format,
                             None if speed is None else float(speed), extra)

    def speech_type(self, request: SpeechRequest) -> str:
        return SPEECH_TYPES[request.response_format]


def speech_body(request: SpeechRequest, model: str) -> dict[str, Any]:
    """The JSON body of ``POST /audio/speech`` for ``request`` with the upstream's model."""
    body: dict[str, Any] = {**request.extra, "model": model, "input": request.input,
                            "response_format": request.response_format}
    if request.voice is not None:
        body["voice"] = request.voice
    if request.speed is not None:
        body["speed"] = request.speed
    return body


def _audio_file(upload: Upload) -> Upload:
    """The upload, checked to be audio OpenAI takes; a ``.opus`` file (Ogg Opus, as the
    speech endpoint makes them) is named ``.ogg``, the extension the API knows it by."""
    if not upload.data:
        raise InvalidRequest("'file' is empty.", param="file", code="empty_file")
    name = upload.filename or ""
    stem, dot, extension = name.rpartition(".")
    extension = extension.lower() if dot else ""
    if extension == "opus":
        return Upload(f"{stem}.ogg", upload.content_type or "audio/ogg", upload.data)
    if extension in AUDIO_EXTENSIONS:
        return upload
    told = _EXTENSION_OF.get(upload.content_type.split(";")[0].strip().lower())
    if not extension and told is not None:  # a nameless upload: name it by its type
        return Upload(f"{name or 'audio'}.{told}", upload.content_type, upload.data)
    raise InvalidRequest(f"Unsupported audio format ({name or upload.content_type or 'unknown'})"
                         f"; supported: {', '.join(AUDIO_EXTENSIONS)}.", param="file",
                         code="unsupported_audio_format")


def _no_stream(value: str | None) -> None:
    """Streamed transcripts (``stream=true``, server-sent ``transcript.text.delta``
    events) are not served: a clear 400 rather than an event stream relayed as a body."""
    if value is not None and value.strip().lower() in ("true", "1"):
        raise InvalidRequest("This gateway does not stream transcriptions; send the request "
                             "without 'stream' to get the finished transcript.",
                             param="stream", code="stream_not_supported")


def _number(value: str | None, name: str, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}.",
                             param=name, code="invalid_value")
    return number


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _segments(transcript: Transcript) -> list[Segment]:
    """The transcript's segments, else cues cut from its words, else one cue for all."""
    if transcript.segments:
        return transcript.segments
    if transcript.words:
        return segments_from_words(transcript.words)
    if not transcript.text:
        return []
    return [Segment(transcript.text, 0.0, transcript.duration or 0.0)]


def _segment(index: int, segment: Segment) -> dict[str, Any]:
    """A ``verbose_json`` segment; the decoder's own numbers (logprobs, tokens) are unknown
    for an upstream that is not Whisper, and given neutral values."""
    return {"id": index, "seek": 0, "start": segment.start, "end": segment.end,
            "text": segment.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
            "compression_ratio": 0.0, "no_speech_prob": 0.0}
