"""Audio: transcription and translation of an uploaded file, and speech from text.

Each is an operation of the one pipeline, so routing, combos, fallback,
cooldowns, budgets, usage records and the ``X-OmniRoute-*`` headers work as for
chat. The client's API (its format's :class:`~omniroute.formats.audio.AudioCodec`)
reads the request and shapes the answer:

* :class:`Transcribe` / :class:`Translate` read a ``multipart/form-data`` upload
  (``max_upload_bytes``, ``upload_timeout``). A provider that speaks the client's
  audio API answers in the response format asked for, and its body goes back as
  it came (the JSON shapes get the gateway's ``task``, ``language`` and
  ``duration``); another one (Deepgram) returns a transcript the client's API
  renders. The record's ``audio_seconds`` (what the request is charged by) is the
  upstream's count, else the length measured from the file.
* :class:`Speak` relays the upstream's audio chunk by chunk as it arrives (each
  wait bounded by ``idle_timeout``), never buffered; its record's ``characters``
  is the input's length.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from aiohttp import web

from omniroute.bodies import read_form
from omniroute.config import Settings
from omniroute.formats.audio import AudioCodec, TranscribeRequest, Transcription, wav_seconds
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation, Prices
from omniroute.routing import Target
from omniroute.storage import RequestRecord

#: upstream answer headers passed on to the client
_PASSED_HEADERS = (("x-request-id", "X-Upstream-Request-Id"),)


class Transcribe(Operation):
    """Speech to text, in the spoken language (``POST /v1/audio/transcriptions``)."""

    name = "transcription"
    capability = "transcription"
    #: a transcription answers all at once, after a time that grows with the audio:
    #: racing a second upload to the next target would only pay twice
    hedged = False
    #: what the upstream is asked to do (:data:`omniroute.formats.audio.TASKS`)
    task: ClassVar[str] = "transcribe"

    def __init__(self, fmt: Format, endpoint: str) -> None:
        super().__init__(fmt, endpoint)
        assert fmt.audio is not None, f"format {fmt.name!r} has no audio API"
        self.codec: AudioCodec = fmt.audio

    async def read(self, ctx: RequestContext, request: web.Request, settings: Settings) -> None:
        form = await read_form(request, settings.max_upload_bytes, settings.upload_timeout)
        ask = ctx.payload = self.codec.transcription(form, self.task)
        # the log and the idempotency key see the fields and the file's name and size; the
        # budget's token estimate has nothing to read (audio is charged by its seconds)
        ctx.body, ctx.body_bytes = ask.summary(), 0

    def inspect(self, ctx: RequestContext) -> None:
        ask: TranscribeRequest = ctx.payload
        ctx.model, ctx.stream = ask.model, False
        # measured before any call, for a budget's estimate (:meth:`estimate_usd`); the
        # upstream's count replaces it
        ctx.record.audio_seconds = wav_seconds(ask.file.data)

    def estimate_usd(self, ctx: RequestContext, prices: Prices, target: Target,
                     tokens_in: int, tokens_out: int) -> float | None:
        """The seconds measured from the file (a WAV's header; else none are known)."""
        return prices.estimate_usd(target, tokens_in, tokens_out,
                                   seconds=ctx.record.audio_seconds or 0.0)

    async def call(self, ctx: RequestContext, target: Target) -> Reply:
        ask: TranscribeRequest = ctx.payload
        done = await target.provider.transcribe(target.model, ask)
        if done.transcript is not None:
            answer = self.codec.transcript(ask, done.transcript)
        else:
            assert done.body is not None
            answer = self.codec.relayed(ask, done.body, done.content_type)
        return Reply(body=answer.body, content_type=answer.content_type,
                     on_win=partial(_counted, ctx.record, answer))


def _counted(record: RequestRecord, answer: Transcription) -> None:
    """The served answer's usage into the record: its seconds (the measured length stays
    when the upstream said none) and the tokens of an upstream that bills by them."""
    if answer.seconds is not None:
        record.audio_seconds = answer.seconds
    if answer.input_tokens is not None or answer.output_tokens is not None:
        record.prompt_tokens, record.completion_tokens = answer.input_tokens, answer.output_tokens


class Translate(Transcribe):
    """Speech to English text (``POST /v1/audio/translations``); a provider type without
    translations (Deepgram) is skipped for the next target, uncharged."""

    name = "translation"
    capability = "translation"
    task = "translate"


class Speak(Operation):
    """Text to speech (``POST /v1/audio/speech``): the audio is relayed as it arrives."""

    name = "speech"
    capability = "speech"

    def __init__(self, fmt: Format, endpoint: str) -> None:
        super().__init__(fmt, endpoint)
        assert fmt.audio is not None, f"format {fmt.name!r} has no audio API"
        self.codec: AudioCodec = fmt.audio

    def inspect(self, ctx: RequestContext) -> None:
        ask = ctx.payload = self.codec.speech(ctx.body)
        ctx.model, ctx.stream, ctx.binary = ask.model, True, True
        ctx.record.characters = len(ask.input)  # what speech is charged by

    def estimate_usd(self, ctx: RequestContext, prices: Prices, target: Target,
                     tokens_in: int, tokens_out: int) -> float | None:
        """The input's characters, at the target's price per character."""
        return prices.estimate_usd(target, tokens_in, tokens_out,
                                   characters=ctx.record.characters or 0)

    async def call(self, ctx: RequestContext, target: Target) -> Reply:
        upstream = await target.provider.speak(target.model, ctx.payload)
        assert upstream.events is not None
        content_type = (upstream.headers.get("content-type")
                        or self.codec.speech_type(ctx.payload))
        # a duplicate of an idempotent request gets the type with the shared headers
        headers = {"Content-Type": content_type}
        for name, header in _PASSED_HEADERS:
            if name in upstream.headers:
                headers[header] = upstream.headers[name]
        return Reply(frames=upstream.events, close=upstream.close, content_type=content_type,
                     headers=headers)
