"""What a wire format is: the contract every format plugin implements.

A :class:`Format` is registered by a plugin (``register_formats``) and used on
both sides of the gateway:

* client side: it checks and decodes the client's request into the canonical
  :class:`~omniroute.formats.canonical.Request`, and encodes the canonical
  response, stream events and errors back into the client's dialect;
* provider side: it encodes the canonical request into the upstream's body,
  and decodes the upstream's JSON answer and stream frames.

When client and provider speak the same format nothing is decoded: the body
goes upstream as sent (``with_model``) and the upstream frames come back as
they are; the format only reads usage and errors on the side.

Every method is pure (data in, data out) except the two stream transforms,
which are async generators over the frames / events of one response.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.audio import AudioCodec
from omniroute.formats.streams import StreamDecoder, StreamEncoder


@dataclass(slots=True)
class ClientRequest:
    """A client request as the endpoint received it, before any translation."""

    body: dict[str, Any]
    #: the model from the body, or from the URL for formats that put it there (Gemini)
    model: str
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientRoute:
    """One endpoint of a format's client API; the app registers every one at start-up.

    ``path`` is an aiohttp pattern; a ``{model}`` variable names the model in the
    URL (Gemini), a ``{provider}`` variable pins a connection prefix.
    """

    method: str
    path: str
    #: what serves it: ``"chat"``, ``"count_tokens"``, ``"embeddings"``, ``"images"``,
    #: ``"transcription"``, ``"translation"``, ``"speech"`` (through the format's
    #: :attr:`Format.audio`), ``"models"`` (the model list) or ``"model"`` (one model)
    operation: str
    #: the request log's name for it (``"chat.completions"``)
    endpoint: str = ""
    #: the stream flag the path implies (Gemini's ``:streamGenerateContent``), or None
    stream: bool | None = None
    #: when another format declares the same method and path, requests carrying one of
    #: these headers are this format's (google-genai on ``GET /v1/models``)
    when_headers: tuple[str, ...] = ()
    #: a ``"models"`` route that lists only models of this type (``"image"`` for
    #: ``GET /v1/images/generations``); None: every model (``?type=`` may still filter)
    model_type: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the gateway offers, for the model-list routes."""

    id: str
    #: who offers it: a connection prefix, ``"combo"`` or ``"alias"``
    owned_by: str
    #: when the gateway started (Unix seconds): the lists' ``created`` time
    created: int
    #: what it makes: ``"chat"``, ``"embedding"`` or ``"image"``
    #: (:meth:`omniroute.providers.base.Provider.model_type`; a combo or an alias has
    #: the type of its first target)
    type: str = "chat"


class Format:
    """Base class of wire formats. Subclass it and register it from a plugin."""

    #: the format's name; provider types name the format they speak (``Provider.format``)
    name: ClassVar[str]
    #: the Content-Type of a streamed answer in this format
    stream_content_type: ClassVar[str] = "text/event-stream; charset=utf-8"
    #: the client API's endpoints (none for a format only providers speak)
    client_routes: ClassVar[tuple[ClientRoute, ...]] = ()
    #: path prefixes of this client API: an unknown route under one still gets this
    #: format's error shape (a Gemini client gets a Gemini 404)
    path_prefixes: ClassVar[tuple[str, ...]] = ()
    #: the client API's audio endpoints (transcription, translation, speech), if it has any
    audio: ClassVar[AudioCodec | None] = None
    #: whether :meth:`decode_request` reads the request's headers: the response cache
    #: then computes such a request's key every time instead of keeping it by the body
    #: (:mod:`omniroute.cache.memo`); no built-in format does
    decode_reads_headers: ClassVar[bool] = False

    # ------------------------------------------------------------------ client side

    def inspect(
        self, body: dict[str, Any], *, path_model: str | None = None,
        path_stream: bool | None = None,
    ) -> tuple[str, bool]:
        """The model and stream flag of a client request.

        Cheap enough for the pass-through lane; raise
        :class:`~omniroute.errors.InvalidRequest` when the request cannot be served.

        :param path_model: the model named by the URL, for formats that put it there.
        :param path_stream: the stream flag implied by the URL (Gemini's
            ``:streamGenerateContent``), when the URL implies one.
        """
        raise NotImplementedError

    def decode_request(self, request: ClientRequest) -> c.Request:
        """The canonical form of a client request (``InvalidRequest`` when malformed).

        Pure: a function of the request's body, model, stream flag and query only; the
        response cache keeps a repeated request's key by those (:mod:`omniroute.cache.memo`).
        A format whose decode reads the headers too says so (``decode_reads_headers``)."""
        raise NotImplementedError

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        """The JSON body of a non-streamed answer to ``request``."""
        raise NotImplementedError

    def encode_stream(
        self, events: AsyncIterator[c.Event], request: c.Request
    ) -> AsyncIterator[bytes]:
        """The frames (SSE events, NDJSON lines) of a streamed answer, one per write."""
        raise NotImplementedError

    def stream_encoder(self, request: c.Request) -> StreamEncoder | None:
        """:meth:`encode_stream` as a synchronous object fed one event at a time, or None
        when the format has only :meth:`encode_stream` (:mod:`omniroute.formats.streams`)."""
        return None

    def error_body(self, err: GatewayError) -> bytes:
        """The JSON body of an error answer in this format (status: ``err.status``)."""
        raise NotImplementedError

    def error_frame(self, err: GatewayError) -> bytes:
        """An error that ends a stream after its first byte, as this format signals it."""
        raise NotImplementedError

    def keepalive_frame(self) -> bytes | None:
        """A frame that keeps a waiting stream alive (Anthropic ``ping``), or None."""
        return None

    #: whether this format's official SDK skips an SSE comment line (``: ...``) in a
    #: stream: progress frames (:mod:`omniroute.pipeline.progress`) are sent only then
    sse_comments: ClassVar[bool] = False

    def comment_frame(self, text: bytes) -> bytes | None:
        """An SSE comment holding ``text`` (one line) that this format's SDK skips, or None
        when it would not skip one (google-genai parses every line; NDJSON has no comments)."""
        return b": " + text + b"\n\n" if self.sse_comments else None

    def claims_path(self, path: str) -> bool:
        """Whether an unknown route at ``path`` still belongs to this client API (its errors
        take this format's shape)."""
        return path.startswith(self.path_prefixes) if self.path_prefixes else False

    def model_name(self, path_model: str) -> str:
        """The model a URL names (Gemini's ``models/`` prefix is not part of it)."""
        return path_model

    def model_list(self, models: Sequence[ModelInfo]) -> dict[str, Any]:
        """The JSON body of the client API's model list (route operation ``"models"``)."""
        raise NotImplementedError

    def model_card(self, model: ModelInfo) -> dict[str, Any]:
        """The JSON body describing one model (route operation ``"model"``)."""
        raise NotImplementedError

    def count_request(self, body: dict[str, Any], path_model: str | None) -> tuple[
            str, dict[str, Any]]:
        """The model and the request body of a token-count request (``"count_tokens"``).

        The body is what :meth:`decode_request` reads for the local estimate, and
        what an upstream speaking this format is asked to count.
        """
        raise NotImplementedError

    def count_answer(self, tokens: int) -> dict[str, Any]:
        """The JSON answer of a token count of ``tokens`` input tokens."""
        raise NotImplementedError

    def embed_request(self, body: dict[str, Any], route: ClientRoute) -> c.EmbedRequest:
        """The embeddings request of a client body (route operation ``"embeddings"``)."""
        raise NotImplementedError

    def embed_answer(self, request: c.EmbedRequest, vectors: list[list[float]], tokens: int,
                     elapsed_ns: int, route: ClientRoute) -> dict[str, Any]:
        """The JSON answer of an embeddings request: one vector per input, in order."""
        raise NotImplementedError

    def image_request(self, body: dict[str, Any], route: ClientRoute) -> c.ImageRequest:
        """The image generation request of a client body (route operation ``"images"``)."""
        raise NotImplementedError

    def image_answer(self, request: c.ImageRequest, result: c.ImageResult,
                     route: ClientRoute) -> dict[str, Any]:
        """The JSON answer of an image generation request: the images, in order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ provider side

    def encode_request(
            self, request: c.Request, client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The upstream body for ``request``.

        :param client: the provider connection's settings (defaults such as a
            ``max_tokens`` the format requires), or None.
        """
        raise NotImplementedError

    def decode_response(self, body: bytes) -> c.Response:
        """The canonical form of an upstream JSON answer (``UpstreamError`` when broken)."""
        raise NotImplementedError

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        """Canonical events from upstream frames; raises a ``GatewayError`` on an error frame."""
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder | None:
        """:meth:`decode_stream` as a synchronous object fed one frame at a time, or None
        when the format has only :meth:`decode_stream` (:mod:`omniroute.formats.streams`)."""
        return None

    # ------------------------------------------------------------------ pass-through lane

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The client's body with the upstream model name (a copy; never mutate ``body``)."""
        return body if body.get("model") == model else {**body, "model": model}

    def usage_from_body(self, body: bytes) -> c.Usage:
        """Token counts of a JSON answer in this format."""
        return c.Usage()

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        """Token counts carried by one stream frame, or None (cheap: called per frame)."""
        return None

    #: byte strings of which one is in every frame where :meth:`usage_from_frame` or
    #: :meth:`error_from_frame` can find anything: the pass-through lane then reads only
    #: the frames of a chunk that hold one. Empty (the default): every frame is read.
    side_markers: ClassVar[tuple[bytes, ...]] = ()

    #: matches a stream chunk of this format that holds content (text, reasoning or a
    #: tool call), not only framing: the pass-through lane searches each chunk with it
    #: until it matches, for the time to the first content token. None: the first
    #: chunk counts as content.
    content_pattern: ClassVar[re.Pattern[bytes] | None] = None

    def conversation_seed(self, body: dict[str, Any]) -> tuple[str | None, str | None]:
        """The system prompt and first user message as text, for a session fingerprint.

        Cheap and approximate (it only has to tell conversations apart); the
        default reads the common shapes (``system``/``instructions``/
        ``systemInstruction``, ``messages``/``contents``/``input``).
        """
        return _seed(body)

    def text_request(self, body: dict[str, Any]) -> c.TextRequest | None:
        """The request as :data:`~omniroute.formats.canonical.TextRequest` when it is only
        text turns and scalar settings, else None (the default: the request is decoded).

        Cheap, on every cacheable request: the response cache keys on it instead of
        decoding. It must describe the very request :meth:`decode_request` would make of
        ``body`` (tests compare them); a format whose decode reads more than the body
        (the headers, the URL's model) leaves it None.
        """
        return None

    def asked_text(self, body: dict[str, Any]) -> str | None:
        """The text of the body's last message when that is a user's plain text and the
        body holds nothing :meth:`text_request` does not read; else None (the default:
        the response cache keys the request by its text form or its decode).

        Cheaper than :meth:`text_request` (the other messages are not read): the
        ``memory`` backend keeps a new such request's answer by the body's bytes, indexed
        by this text. It must be that message's text in the request :meth:`decode_request`
        makes of ``body`` (tests compare them), and such a body must be one the cache may
        keep (no field that asks for several answers or log-probabilities).
        """
        return None

    def temperature(self, body: dict[str, Any]) -> Any:
        """The sampling temperature the client asked for, as sent (None: not given).

        Cheap, without decoding the request: the response cache reads it on every
        request to tell a deterministic one (``0``) from the rest.
        """
        return body.get("temperature")

    def hidden_frames(self, client: ClientRequest) -> Callable[[bytes], bool] | None:
        """On the pass-through lane: which usage-carrying frames the client must not see.

        For frames the gateway asked the upstream for on the client's behalf
        (OpenAI's usage-only chunk when the client did not set
        ``stream_options.include_usage``). Called once per request; the
        predicate only sees frames for which :meth:`usage_from_frame` found usage.
        """
        return None

    def error_from_frame(self, frame: bytes) -> str | None:
        """The message of an in-stream error frame, or None (cheap: called per frame)."""
        return None


def _text_of(value: Any) -> str | None:
    """Text from a string, a list of blocks/parts, or a message-like dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("content", "parts", "text"):
            if key in value:
                return _text_of(value[key])
        return None
    if isinstance(value, list):
        texts = [t for t in (_text_of(v) for v in value) if t]
        return "\n".join(texts) if texts else None
    return None


def _seed(body: dict[str, Any]) -> tuple[str | None, str | None]:
    system = _text_of(body.get("system") or body.get("instructions")
                      or body.get("systemInstruction") or body.get("system_instruction"))
    turns = body.get("messages") or body.get("contents") or body.get("input")
    first_user = None
    if isinstance(turns, str):
        first_user = turns
    elif isinstance(turns, list):
        for turn in turns:
            if not isinstance(turn, dict):
                continue
            role = turn.get("role")
            if role in ("system", "developer") and system is None:
                system = _text_of(turn)
            elif role == "user" or (role is None and turn.get("type") == "message"):
                first_user = _text_of(turn)
                break
    return system, first_user
