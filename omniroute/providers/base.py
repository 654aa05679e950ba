"""What a provider type is: the contract every provider plugin implements.

A plugin registers a :class:`Provider` subclass (a *type*); each configured
connection (an account) gets one instance of it. Per request the gateway
hands the instance an :class:`UpstreamCall` whose body is already in the
provider's own wire format (``Provider.format``) and gets back an
:class:`UpstreamResponse`: JSON bytes, or an async iterator of raw stream
frames (SSE events, or NDJSON lines for Ollama: see ``HTTPProvider.framing``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import aiohttp

from omniroute.credentials import CredentialStore, MemoryCredentials, Refresher
from omniroute.errors import (
    EmbeddingsNotSupported,
    ImagesNotSupported,
    TargetUnsupported,
    UpstreamError,
)
from omniroute.formats import canonical as c
from omniroute.formats.audio import SpeechRequest, TranscribeRequest, Transcript
from omniroute.providers.model_types import MODEL_TYPES, guess_model_type

if TYPE_CHECKING:
    from omniroute.oauth.quota import Quotas
    from omniroute.storage.store import Connection


@dataclass(frozen=True)
class Preset:
    """A well-known service a provider type can talk to (base URL, default prefix)."""

    name: str
    base_url: str
    prefix: str
    description: str = ""
    needs_api_key: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)


class Timeouts:
    """Upstream time bounds, rebuilt whenever the settings change."""

    def __init__(self, *, connect: float, first_byte: float, idle: float, total: float,
                 image: float = 300.0) -> None:
        self.connect = connect
        self.first_byte = first_byte
        self.idle = idle
        self.total = total
        #: seconds one image generation may take, first byte to last (or a local
        #: server's job, submitted, polled and fetched)
        self.image = image
        #: JSON calls: the answer must start within ``first_byte`` (every socket
        #: read is bounded by it); the whole exchange is bounded by ``total``.
        self.json = aiohttp.ClientTimeout(total=total, connect=connect, sock_read=first_byte)
        #: streams: every socket read is bounded by ``idle``; first event and
        #: total time are enforced by the caller.
        self.stream = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=idle)
        #: image generations: a long wait for the answer is normal, so ``image`` bounds
        #: both the wait for it and the whole exchange
        self.images = aiohttp.ClientTimeout(total=image, connect=connect, sock_read=image)

    @classmethod
    def from_settings(cls, settings: Any) -> Timeouts:
        return cls(
            connect=settings.connect_timeout,
            first_byte=settings.first_byte_timeout,
            idle=settings.idle_timeout,
            total=settings.total_timeout,
            image=settings.image_timeout,
        )


def _quotas() -> Quotas:
    from omniroute.oauth.quota import Quotas  # (the oauth package imports this module)

    return Quotas()


@dataclass
class ProviderContext:
    """Shared things a provider instance may use (passed in, never global)."""

    http: aiohttp.ClientSession
    timeouts: Timeouts
    user_agent: str = "omniroute"
    #: where renewed credentials are kept (:meth:`Provider.save_credentials`)
    credentials: CredentialStore = field(default_factory=MemoryCredentials)
    #: renews credentials once per connection at a time (OAuth types ask it before a
    #: call whose token is about to lapse; the data path asks it after a 401/403)
    refresher: Refresher = field(default_factory=Refresher)
    #: seconds before an access token lapses when it is renewed ahead of a call
    #: (the ``oauth_refresh_margin`` setting)
    refresh_margin: float = 300.0
    #: subscription accounts' quotas by connection id (a rest outlives a provider
    #: instance rebuilt by a configuration reload)
    quotas: Quotas = field(default_factory=_quotas)


@dataclass(slots=True)
class UpstreamCall:
    """One request to send upstream, already in the provider's format."""

    body: dict[str, Any]
    model: str
    stream: bool
    request_id: str = ""
    #: client headers a provider may choose to pass on (e.g. ``anthropic-beta``)
    client_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class UpstreamResponse:
    """A successful upstream answer: ``body`` for JSON, ``events`` for streams.

    ``events`` yields complete frames (SSE events or NDJSON lines) as raw bytes
    and must be closed
    (``contextlib.aclosing``) so that the upstream connection is released.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    #: the same stream read another way (read one of the two, not both): the frames
    #: each socket read completed, as one contiguous block of bytes (whole frames only,
    #: never cut apart), so frames that arrived together leave together in one write;
    #: None when the provider offers only ``events``
    reads: AsyncIterator[bytes] | None = None
    #: drops the upstream connection at once, even if ``events`` was never iterated
    #: (closing an async generator that never started does not run its ``finally``)
    close: Callable[[], None] | None = None
    #: cuts a block of ``reads`` into its frames, one at a time (the framing's
    #: ``Splitter.each``); None when the provider does not say (a translated stream is
    #: then read by ``events``)
    split: Callable[[bytes], Iterator[bytes]] | None = None


@dataclass(slots=True)
class Embeddings:
    """An embeddings answer: one vector per input, in input order."""

    vectors: list[list[float]]
    #: the upstream's count of input tokens (None when it sent none)
    prompt_tokens: int | None
    #: the model that made them, as the upstream names it
    model: str


@dataclass(slots=True)
class Transcribed:
    """A transcription answer: the upstream's own body, when it speaks the client's audio
    API (pass-through: in the response format asked for), or a transcript for the
    client's API to render."""

    body: bytes | None = None
    #: the upstream's Content-Type of ``body``
    content_type: str = ""
    transcript: Transcript | None = None


_T = TypeVar("_T")


def checked_vectors(value: Any, count: int) -> list[list[float]]:
    """``value`` if it is ``count`` lists of numbers, else the upstream's failure."""
    if (not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, list) and v and all(isinstance(x, (int, float))
                                              and not isinstance(x, bool) for x in v)
            for v in value)):
        raise UpstreamError(f"upstream sent a malformed embeddings answer "
                            f"(expected {count} vector(s))")
    return [[float(x) for x in v] for v in value]


async def all_or_none(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``calls`` at once and give their results in order; when one fails (or the
    caller is cancelled) the others are cancelled too and the failure is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:  # read, so no other failure is reported as unread
            if not task.cancelled():
                task.exception()
        raise


def summed_images(results: Sequence[c.ImageResult]) -> c.ImageResult:
    """Several answers' images in order, their token counts added up (a count no answer
    gave stays None)."""
    usage = c.Usage()
    for part in results:
        for name in ("input_tokens", "output_tokens"):
            value = getattr(part.usage, name)
            if value is not None:
                setattr(usage, name, (getattr(usage, name) or 0) + value)
    return c.ImageResult([image for part in results for image in part.images], usage)


def _secrets(credentials: Mapping[str, Any]) -> dict[str, Any]:
    """The credentials without their ``extra`` (account details, a kept project)."""
    return {k: v for k, v in credentials.items() if k != "extra"}


#: model types and the capability that serves each
_KINDS = (("chat", "chat"), ("embedding", "embeddings"), ("image", "images"),
          ("transcription", "transcription"), ("speech", "speech"))


class Provider:
    """Base class of provider types. Subclass it and register it from a plugin.

    Class attributes describe the type; instances serve one connection.
    """

    #: the type name connections refer to (``"openai"``)
    type: ClassVar[str]
    #: the wire format this provider speaks (``"openai"``)
    format: ClassVar[str] = "openai"
    #: model prefix for connections that set none
    default_prefix: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: named presets (well-known services) of this type
    presets: ClassVar[Mapping[str, Preset]] = {}
    #: credential names this type understands; ``required`` ones must be given
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    requires_credentials: ClassVar[bool] = True
    #: what a connection of this type can serve: ``"chat"``, ``"embeddings"`` (implement
    #: :meth:`embed`), ``"count_tokens"`` (implement :meth:`count_tokens`), ``"images"``
    #: (implement :meth:`generate_images`), ``"transcription"`` and ``"translation"``
    #: (implement :meth:`transcribe`), ``"speech"`` (implement :meth:`speak`). The
    #: gateway skips, without charging it, a target whose type lacks what a request needs.
    capabilities: ClassVar[frozenset[str]] = frozenset({"chat"})
    #: ``"api_key"``, or ``"oauth"`` for subscription accounts (stricter circuit
    #: breaker; a 401/403 first triggers :meth:`refresh_credentials`)
    auth_kind: ClassVar[str] = "api_key"
    #: the ``genai-prices`` provider id this type's models are priced as (a connection's
    #: ``base_url`` of a known service, or its ``price_provider`` setting, comes first;
    #: see :mod:`omniroute.pricing`)
    price_provider: ClassVar[str | None] = None
    #: False for local servers whose tokens cost nothing (Ollama)
    priced: ClassVar[bool] = True

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        self.connection = connection
        self.context = context
        #: how many times :meth:`save_credentials` changed the credentials of this
        #: instance (their ``extra`` aside, which holds no secret): an upstream call notes
        #: it when it is sent, so that a 401 is retried only with other credentials than
        #: the refused ones (see :meth:`omniroute.credentials.Refresher.refresh`)
        self.credentials_generation = 0

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate and complete a connection's settings and credentials.

        Raise ``ValueError`` with a readable message when they are unusable.
        """
        unknown = set(credentials) - set(cls.credential_fields)
        if unknown:
            raise ValueError(f"unknown credential field(s): {', '.join(sorted(unknown))}")
        needs = preset.needs_api_key if preset else cls.requires_credentials
        if needs and not any(credentials.get(f) for f in cls.credential_fields):
            raise ValueError(f"{cls.type} connections need: {', '.join(cls.credential_fields)}")
        models = settings.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("models must be a list of model names")
        types = settings.get("model_types", {})
        if not isinstance(types, dict) or not all(
                isinstance(k, str) and v in MODEL_TYPES for k, v in types.items()):
            raise ValueError("model_types must map model names to one of "
                             f"{', '.join(MODEL_TYPES)}")
        return settings, credentials

    @property
    def configured_models(self) -> list[str]:
        return list(self.connection.settings.get("models", []))

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        """Send a chat request; raise :class:`omniroute.errors.GatewayError` on failure."""
        raise NotImplementedError

    async def embed(self, model: str, inputs: list[str], options: dict[str, Any]) -> Embeddings:
        """Embed each of ``inputs`` with ``model``; raise a ``GatewayError`` on failure.

        :param options: optional knobs, so far only ``dimensions`` (an int).
        The default says this provider type serves no embeddings (a 400 that the
        gateway treats as "skip this target", not as the account's failure).
        """
        raise EmbeddingsNotSupported(
            f"Provider type {self.type!r} (connection {self.connection.name!r}) does not "
            "serve embeddings.", param="model")

    async def transcribe(self, model: str, request: TranscribeRequest) -> Transcribed:
        """Transcribe (``request.task == "transcribe"``) or translate into English
        (``"translate"``) the audio of ``request`` with ``model``; raise a ``GatewayError``
        on failure (capabilities ``"transcription"``, ``"translation"``)."""
        raise TargetUnsupported(f"Provider type {self.type!r} does not transcribe audio.")

    async def speak(self, model: str, request: SpeechRequest) -> UpstreamResponse:
        """Turn ``request.input`` into speech with ``model`` (capability ``"speech"``).

        :returns: the audio as it arrives: ``events`` yields the upstream's bytes chunk
            by chunk (``HTTPProvider.post_stream`` with ``framing=RAW``), returned once
            the first chunk is in.
        """
        raise TargetUnsupported(f"Provider type {self.type!r} does not make speech.")
    async def generate_images(self, model: str, request: c.ImageRequest) -> c.ImageResult:
        """Make ``request.n`` images from ``request.prompt`` with ``model`` (capability
        ``"images"``); raise a ``GatewayError`` on failure.

        Bound the whole call by ``self.context.timeouts.image`` seconds (an HTTP call with
        :attr:`Timeouts.images`). The default says this provider type makes no images (a
        400 that the gateway treats as "skip this target", not as the account's failure).
        """
        raise ImagesNotSupported(
            f"Provider type {self.type!r} (connection {self.connection.name!r}) does not "
            "generate images.", param="model")

    def model_type(self, model: str) -> str:
        """What ``model`` makes (one of :data:`~omniroute.providers.model_types.MODEL_TYPES`),
        for the model lists: the connection's ``model_types`` setting, else the only kind
        this type serves, else what its name suggests. Override it when the upstream says."""
        named = self.connection.settings.get("model_types") or {}
        if model in named:
            return str(named[model])
        kinds = [kind for kind, capability in _KINDS if capability in self.capabilities]
        return kinds[0] if len(kinds) == 1 else guess_model_type(model)

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Count a request's input tokens upstream (capability ``"count_tokens"``).

        :param body: the request in the provider's own format, its ``model`` already
            the upstream's name.
        :param client_headers: the client's headers, for those worth passing on.
        :returns: the upstream's answer, holding ``input_tokens``.
        """
        raise TargetUnsupported(f"Provider type {self.type!r} does not count tokens.")

    async def refresh_credentials(self) -> bool:
        """Renew expired credentials (OAuth); True when the call is worth retrying.

        The gateway calls it through :class:`omniroute.credentials.Refresher`, one
        call per connection at a time, after a 401/403 of an ``auth_kind = "oauth"``
        type. An implementation gets new tokens from its upstream, hands the complete
        new set to :meth:`save_credentials`, rebuilds whatever it derived from the old
        ones (headers) and returns True; it returns False or raises a ``GatewayError``
        when the renewal was refused.
        """
        return False

    async def adopt_credentials(self, credentials: Mapping[str, Any]) -> bool:
        """Another process renewed this connection's credentials: use ``credentials`` from
        now on, without calling the upstream (a refresh token may be single-use, so this
        one must not renew again). True when the call is worth retrying with them.

        The default answers False: the request moves on, and the configuration reload
        brings a provider built with the new credentials. A subscription type that
        derives headers from its credentials rebuilds them here and answers True.
        """
        return False

    async def save_credentials(self, credentials: Mapping[str, Any]) -> None:
        """Use ``credentials`` (the complete set, replacing the old) from now on, and keep
        them: encrypted in the gateway's database, so they survive a restart.

        :raises LookupError: the connection was deleted meanwhile.
        """
        new = dict(credentials)
        if _secrets(new) != _secrets(self.connection.credentials):
            self.credentials_generation += 1
        # this instance uses them even if keeping them fails: a refresh token the
        # upstream just rotated would otherwise be lost with the old one spent
        self.connection.credentials = new
        await self.context.credentials.save(self.connection.id, new)

    def quota_view(self) -> dict[str, Any] | None:
        """The account's quota as its service last reported it (subscriptions: windows,
        remaining, resets; see :mod:`omniroute.oauth.quota`), for ``/api/rate-limits``;
        None when the type reads none."""
        return None

    async def list_models(self) -> list[str]:
        """The model names this connection offers (without prefix)."""
        return self.configured_models

    async def test(self) -> None:
        """Check the connection works; raise a ``GatewayError`` when it does not."""
        await self.list_models()

    async def close(self) -> None:
        """Release anything the instance holds (the shared HTTP session is not its own)."""
