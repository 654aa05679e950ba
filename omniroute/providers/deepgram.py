"""Provider type ``deepgram``: Deepgram's pre-recorded speech-to-text API.

``POST {base_url}/v1/listen?model=nova-3&smart_format=true&language=..`` with the
raw audio as the body (its own Content-Type) and ``Authorization: Token KEY``.
Without a language the request asks for ``detect_language=true``; for the
timed answers (``verbose_json``, ``srt``, ``vtt``) it asks for
``utterances=true``. The answer's ``results.channels[0].alternatives[0]``
(``transcript``, ``words`` with ``punctuated_word``), ``results.utterances``,
``channels[0].detected_language`` and ``metadata.duration`` become a
:class:`~omniroute.formats.audio.Transcript`, which the client's API renders
(OpenAI's ``json``, ``verbose_json``, ``text``, ``srt``, ``vtt``). Deepgram has no
translation into English: translations skip it for the next target.

Errors are ``{"err_code", "err_msg", "request_id"}`` (or ``{"category",
"message", "details"}``). ``GET /v1/models`` lists ``stt`` models by
``canonical_name``.

Sources: developers.deepgram.com (pre-recorded audio, language detection,
utterances, errors, ``/v1/models``), and the response types of
deepgram/deepgram-rust-sdk (``src/common/batch_response.rs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode

import orjson

from omniroute.errors import TargetUnsupported, UpstreamError, UpstreamStatusError
from omniroute.formats.audio import Segment, TranscribeRequest, Transcript, Word
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import Preset, Provider, ProviderContext, Transcribed
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.storage.store import Connection

DEFAULT_BASE_URL = "https://api.deepgram.com"
#: the response formats whose answers need timed segments
_TIMED = ("verbose_json", "srt", "vtt")
#: audio types Deepgram decodes, by file extension (a ``video/*`` type would not be)
_AUDIO_TYPES = {"mp3": "audio/mpeg", "mpga": "audio/mpeg", "mpeg": "audio/mpeg",
                "mp4": "audio/mp4", "m4a": "audio/mp4", "wav": "audio/wav", "ogg": "audio/ogg",
                "oga": "audio/ogg", "flac": "audio/flac", "webm": "audio/webm"}

_PRESETS = [
    Preset("deepgram", DEFAULT_BASE_URL, "deepgram", "Deepgram speech-to-text"),
]


class DeepgramProvider(HTTPProvider):
    """Deepgram's ``/v1/listen`` (pre-recorded audio) over HTTP."""

    type = "deepgram"
    format = "deepgram"
    capabilities = frozenset({"transcription"})
    default_prefix = "deepgram"
    description = "Deepgram speech-to-text (/v1/listen)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields = ("api_key",)
    requires_credentials = True

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.base_url = connection.settings["base_url"].rstrip("/")
        headers = {"User-Agent": context.user_agent, "Accept": "application/json"}
        headers.update(connection.settings.get("headers", {}))
        if connection.credentials.get("api_key"):
            headers["Authorization"] = f"Token {connection.credentials['api_key']}"
        self._headers = headers

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="a deepgram")
        settings["base_url"] = settings["base_url"].removesuffix("/v1")
        return super().configure(settings, credentials, preset)

    async def transcribe(self, model: str, request: TranscribeRequest) -> Transcribed:
        if request.task != "transcribe":
            raise TargetUnsupported("Deepgram does not translate audio into English.")
        answer = await self.post_json(f"{self.base_url}/v1/listen?{listen_query(model, request)}",
                                      {**self._headers, "Content-Type": audio_type(request)},
                                      request.file.data)
        assert answer.body is not None
        return Transcribed(transcript=transcript_from(answer.body, request.language))

    async def list_models(self) -> list[str]:
        """``GET /v1/models``: the speech-to-text models (``stt``), by canonical name."""
        data = await self.get_json(f"{self.base_url}/v1/models", self._headers)
        listed: list[str] = []
        for entry in (data.get("stt") or []) if isinstance(data, dict) else []:
            name = entry.get("canonical_name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in listed and entry.get("batch", True):
                listed.append(name)
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``{"err_code", "err_msg"}`` or ``{"category", "message", "details"}``."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            message = body.decode(errors="replace").strip()[:500] or None
            return self.status_error(status, body, headers, message)
        message = _text(data.get("err_msg")) or _text(data.get("message"))
        details = _text(data.get("details"))
        if details and message:
            message = f"{message} {details}"
        code = _text(data.get("err_code")) or _text(data.get("category"))
        return self.status_error(status, body, headers, message or details, code=code)


def listen_query(model: str, request: TranscribeRequest) -> str:
    """The ``/v1/listen`` query string for ``request``."""
    query = {"model": model, "smart_format": "true"}
    if request.language:
        query["language"] = request.language
    else:
        query["detect_language"] = "true"
    if request.response_format in _TIMED:
        query["utterances"] = "true"
    return urlencode(query)


def audio_type(request: TranscribeRequest) -> str:
    """The body's Content-Type: the upload's audio type, else one its extension names,
    else ``application/octet-stream`` (Deepgram then reads the bytes themselves)."""
    given = request.file.content_type.split(";")[0].strip().lower()
    if given.startswith("audio/"):
        return given
    extension = request.file.filename.rpartition(".")[2].lower()
    return _AUDIO_TYPES.get(extension, "application/octet-stream")


def transcript_from(body: bytes, language: str | None = None) -> Transcript:
    """A pre-recorded ``/v1/listen`` answer as a transcript (channel 0, best alternative).

    :param language: the language the request named (Deepgram echoes it nowhere).
    """
    try:
        data = orjson.loads(body)
        results, metadata = data["results"], data.get("metadata") or {}
        channel = results["channels"][0]
        best = channel["alternatives"][0]
        text = best["transcript"]
        if not isinstance(text, str):
            raise TypeError(text)
        words = [Word(_text(w.get("punctuated_word")) or str(w["word"]), _time(w["start"]),
                      _time(w["end"])) for w in best.get("words") or []]
        segments = [Segment(u["transcript"].strip(), _time(u["start"]), _time(u["end"]))
                    for u in results.get("utterances") or []
                    if u.get("channel", 0) == 0 and isinstance(u.get("transcript"), str)]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError,
            AttributeError):
        raise UpstreamError("upstream sent a malformed Deepgram transcription") from None
    duration = metadata.get("duration") if isinstance(metadata, dict) else None
    return Transcript(
        text=text,
        language=_text(channel.get("detected_language")) or language,
        duration=_time(duration) if isinstance(duration, (int, float)) else None,
        words=words, segments=segments)


def _time(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(value)
    return number


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(DeepgramProvider)
