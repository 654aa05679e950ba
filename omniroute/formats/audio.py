"""Audio in the canonical model: transcription and speech requests, transcripts.

A client API that serves audio (OpenAI's ``/v1/audio/...``) decodes its requests
into these objects and renders a :class:`Transcript` in the response format the
client asked for; a provider type either answers in that same API (its body
then goes back as it came, *pass-through*) or returns a :class:`Transcript`
(Deepgram), which the client's API renders.

Conventions:

* times are seconds from the start of the audio (floats);
* :attr:`Transcript.duration` is the length of the audio, the unit a
  transcription is charged by; :func:`wav_seconds` measures it from the file
  when the upstream does not say (a RIFF/WAVE header is enough);
* a request keeps the client's other fields as sent (``fields``), so an upstream
  speaking the client's API gets them unchanged.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

from omniroute.formats.forms import Form, Upload

#: what a transcription request asks for: the speech as written, or in English
TASKS = ("transcribe", "translate")


@dataclass(slots=True)
class TranscribeRequest:
    """A transcription or translation of one audio file."""

    model: str
    file: Upload
    task: str = "transcribe"
    #: the answer's shape: ``json``, ``text``, ``verbose_json``, ``srt`` or ``vtt``
    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    #: ``"word"`` and/or ``"segment"`` (timestamps in a ``verbose_json`` answer)
    granularities: tuple[str, ...] = ()
    #: every text field as the client sent it, but ``model`` (an upstream speaking the
    #: client's API gets them unchanged)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The request as the request log and the idempotency key see it: its fields,
        and the file's name, type, size and digest (not its bytes)."""
        fields: dict[str, Any] = {name: values[-1] if len(values) == 1 else values
                                  for name, values in self.fields.items()}
        return {**fields, "model": self.model,
                "file": {"filename": self.file.filename, "content_type": self.file.content_type,
                         "bytes": len(self.file.data),
                         "blake2b": hashlib.blake2b(self.file.data, digest_size=16).hexdigest()}}


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    start: float
    end: float


@dataclass(slots=True)
class Transcript:
    """What an upstream heard, before any client API shapes it."""

    text: str
    #: the language spoken (as the upstream names it: ``"en"``, ``"english"``), if known
    language: str | None = None
    #: seconds of audio
    duration: float | None = None
    words: list[Word] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


@dataclass(slots=True)
class Transcription:
    """A transcription answer as the client gets it, and the usage it carries."""

    body: bytes
    content_type: str
    #: seconds of audio the upstream reported (None: it did not say)
    seconds: float | None = None
    #: tokens, for upstreams that charge a transcription by them (``gpt-4o-transcribe``)
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(slots=True)
class SpeechRequest:
    """Text to speak."""

    model: str
    input: str
    #: a voice name, or an object naming one (``{"id": ...}``); None: the upstream's default
    voice: Any = None
    #: the audio encoding asked for (``mp3``, ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``)
    response_format: str = "mp3"
    speed: float | None = None
    #: the client's other fields (``instructions``...), passed on as sent
    extra: dict[str, Any] = field(default_factory=dict)


class AudioCodec:
    """A client API's audio endpoints: its requests in, its answers out (pure).

    A :class:`~omniroute.formats.base.Format` that serves audio sets
    ``Format.audio`` to one.
    """

    def transcription(self, form: Form, task: str) -> TranscribeRequest:
        """The request of a transcription (``task`` ``"transcribe"``) or translation
        (``"translate"``) form; ``InvalidRequest`` when it cannot be served."""
        raise NotImplementedError

    def transcript(self, request: TranscribeRequest, transcript: Transcript) -> Transcription:
        """A transcript rendered in the response format the request asked for."""
        raise NotImplementedError

    def relayed(self, request: TranscribeRequest, body: bytes,
                content_type: str) -> Transcription:
        """An upstream's answer in this same API (pass-through), with what it reports of
        its usage; ``UpstreamError`` when it is not the answer asked for."""
        raise NotImplementedError

    def speech(self, body: dict[str, Any]) -> SpeechRequest:
        """The request of a speech body; ``InvalidRequest`` when it cannot be served."""
        raise NotImplementedError

    def speech_type(self, request: SpeechRequest) -> str:
        """The Content-Type of the audio ``request`` asked for."""
        raise NotImplementedError


def wav_seconds(data: bytes) -> float | None:
    """The length of a RIFF/WAVE file's audio (its ``data`` size over its byte rate),
    or None when ``data`` is not one (other containers are not measured)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            byte_rate = struct.unpack_from("<I", data, body + 8)[0]
        elif chunk == b"data":
            if not byte_rate:
                return None
            # a streamed WAV may declare a size larger than what follows (or 0xFFFFFFFF)
            return min(size, len(data) - body) / byte_rate
        offset = body + size + (size & 1)  # chunks are padded to an even size
    return None
