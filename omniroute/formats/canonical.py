"""The canonical model: one typed shape between every pair of wire formats.

A format decodes its own requests, responses and stream frames into these
objects and encodes them back; no format module knows another format. What a
format cannot express but must survive a round trip (thinking signatures,
encrypted reasoning, Gemini thought signatures, item ids) rides along in the
``signature`` / ``encrypted`` fields or in ``meta``, keyed by the format that
produced it, so another format carries it without understanding it.

Conventions (every format follows them):

* ``Usage.input_tokens`` counts *all* prompt tokens, cache reads and cache
  writes included (OpenAI's and Gemini's convention); Anthropic's decoder adds
  its three counters, its encoder subtracts them again.
* Tool results live in ``Message(role="tool")`` messages that hold only
  :class:`ToolResult` parts; text that came with them in the same source
  message follows in a separate ``user`` message.
* ``Request.system`` holds the leading system prompt (system / developer
  messages before the first turn, Anthropic ``system``, Gemini
  ``systemInstruction``); a system message later in the conversation stays a
  ``Message(role="system")`` in place. A format that has no such message folds
  it into a user turn, wrapped as :data:`SYSTEM_REMINDER`.
* ``ToolCall.arguments`` is JSON text, exactly as the model produced it.
* Stream events refer to parts by ``index``: the position of the part in the
  response, in the order the parts started. Decoders emit ``PartStart`` before
  any delta of that part and ``PartStop`` once; deltas of parts may interleave.
* A mid-stream upstream error is raised (a ``GatewayError``), not yielded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal, TypeAlias

#: a system message later in the conversation, folded into a user turn by formats that
#: have no such message (Claude Code's own convention for context it adds mid-conversation)
SYSTEM_REMINDER = "<system-reminder>\n{}\n</system-reminder>"

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "content_filter", "pause_turn",
    "refusal", "error",
]


# ---------------------------------------------------------------------------- parts


@dataclass(slots=True)
class Text:
    text: str
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Image:
    """An image by value (``data``: base64, with ``media_type``) or by ``url``."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    detail: str | None = None
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class File:
    """A document (PDF, text…) by value or by URL / provider file id."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None
    filename: str | None = None
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Reasoning:
    """Model thinking. ``signature``/``encrypted``/``redacted`` are opaque.

    ``source`` names the format that produced the opaque values: a format only
    sends them back to an upstream of the same format (an Anthropic signature
    means nothing to Gemini). ``redacted`` holds Anthropic ``redacted_thinking``
    data; ``encrypted`` holds Responses ``encrypted_content``.
    """

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    encrypted: str | None = None
    summary: list[str] = field(default_factory=list)
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = ""
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: list[Text | Image | File] = field(default_factory=list)
    is_error: bool = False
    #: the called tool's name, when the source format says it (Gemini needs it)
    name: str | None = None
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


Part: TypeAlias = Text | Image | File | Reasoning | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)
    name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- request


@dataclass(slots=True)
class Tool:
    """A function tool. Hosted tools (web search…) keep their raw definition in ``meta``."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None  # with mode "tool"


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class ReasoningConfig:
    """What the client asked of the model's thinking.

    ``effort`` is one of minimal/low/medium/high/xhigh (or None);
    ``budget_tokens`` a thinking budget; ``enabled=False`` turns thinking off.
    """

    enabled: bool = True
    effort: str | None = None
    budget_tokens: int | None = None
    include_thoughts: bool = True
    adaptive: bool = False


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message] = field(default_factory=list)
    system: list[Text] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: format-specific extras another format may ignore, keyed by format name
    meta: dict[str, Any] = field(default_factory=dict)

    def for_model(self, model: str) -> Request:
        """This request for another model name: ``dataclasses.replace(self, model=model)``
        (the same shallow copy), its fields read at once in C (``replace`` walks them
        in Python: some 600 bytecodes, on every translated request)."""
        return Request(model, *_REQUEST_FIELDS(self)[1:])


#: every field of a :class:`Request`, in order, read in one call (``model`` first)
_REQUEST_FIELDS = attrgetter(*(f.name for f in fields(Request)))


#: A request that is nothing but text turns and scalar settings, read from a client body
#: without building a :class:`Request` (``Format.text_request``), for what must be cheap
#: on every request (the response cache's key). ``(system, turns, settings)``:
#:
#: * ``system``: the texts of :attr:`Request.system`, one :class:`Text` each (none empty);
#: * ``turns``: ``(role, text)`` per message, a :class:`Message` of one :class:`Text`
#:   (no part when ``text`` is empty), no name, no meta;
#: * ``settings``: ``(parallel_tool_calls, max_tokens, temperature, top_p, top_k, stop,
#:   seed, presence_penalty, frequency_penalty)``, as :class:`Request` holds them.
#:
#: No tools, tool choice, response format, reasoning settings or format extras that
#: change the answer: a request with any of those has no text form.
TextRequest: TypeAlias = tuple[list[str], list[tuple[str, str]], tuple[Any, ...]]


# ---------------------------------------------------------------------------- response


#: counts at or past this are not believed (SQLite stores 64-bit integers; JSON numbers
#: are exact to 2**53)
MAX_TOKENS_COUNT = 2**53
#: the plausible counts (``in`` a range is one bytecode, a chained comparison six)
_PLAUSIBLE = range(MAX_TOKENS_COUNT)


def token_count(value: Any) -> int | None:
    """An upstream's token count, or None when it is not a plausible one (a bool, a
    negative number, a float, or one too large to store): one absurd number from an
    upstream must not stop the request log."""
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value if value in _PLAUSIBLE else None
    return None


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None

    def merge(self, other: Usage) -> None:
        """Take every count ``other`` knows (streams report usage in pieces)."""
        for name in ("input_tokens", "output_tokens", "cache_read_tokens",
                     "cache_write_tokens", "reasoning_tokens"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[Part] = field(default_factory=list)
    stop_reason: StopReason | None = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- stream events


@dataclass(slots=True)
class Start:
    """The response begins (always the first event)."""

    id: str
    model: str
    usage: Usage = field(default_factory=Usage)  # input counts when known up front
    created: int | None = None


@dataclass(slots=True)
class PartStart:
    """A part begins: an empty ``Text``/``Reasoning``, or a ``ToolCall`` with id and name."""

    index: int
    part: Text | Reasoning | ToolCall


@dataclass(slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """More thinking text, and/or opaque data (a signature arrives as a delta)."""

    index: int
    text: str = ""
    signature: str | None = None
    encrypted: str | None = None
    summary: str | None = None


@dataclass(slots=True)
class ToolArgsDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class PartStop:
    index: int


@dataclass(slots=True)
class Finish:
    """The response ends (always the last event): why, and the final usage."""

    stop_reason: StopReason | None
    usage: Usage = field(default_factory=Usage)
    stop_sequence: str | None = None


Event: TypeAlias = (
    Start | PartStart | TextDelta | ReasoningDelta | ToolArgsDelta | PartStop | Finish)


# ----------------------------------------------------------------------------- embeddings


@dataclass(slots=True)
class EmbedRequest:
    """An embeddings request, whatever client API it came in."""

    model: str
    inputs: list[str]
    #: optional knobs, so far only ``dimensions`` (an int)
    options: dict[str, Any] = field(default_factory=dict)
    #: OpenAI clients may ask for ``"base64"`` (little-endian float32)
    encoding: str = "float"


# ----------------------------------------------------------------------------- images


@dataclass(slots=True)
class ImageRequest:
    """An image generation request, whatever client API it came in.

    ``response_format`` is what the client asked for (``"url"``, ``"b64_json"``) or
    None when it did not say: an upstream that takes it gets it as sent; a provider
    that only makes bytes answers ``b64_json`` unless ``"url"`` was asked (then a
    ``data:`` URL). ``options`` holds the client's other fields (OpenAI's ``style``,
    ``background``, ``output_format``, ``user``... and a local server's ``steps``,
    ``seed``, ``negative_prompt``): an OpenAI-compatible upstream gets them as they
    are, the other provider types take the ones they understand.
    """

    model: str
    prompt: str
    n: int = 1
    #: ``"WIDTHxHEIGHT"``, ``"auto"``, or None (the upstream's default)
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def dimensions(self, default: tuple[int, int] = (1024, 1024)) -> tuple[int, int]:
        """``size`` as (width, height); ``default`` for ``"auto"`` or no size."""
        if self.size is None or "x" not in self.size:
            return default
        width, height = self.size.split("x", 1)
        return int(width), int(height)


@dataclass(slots=True)
class GeneratedImage:
    """One image: its bytes as base64 (``data``, with ``media_type``) or a ``url``."""

    data: str | None = None
    url: str | None = None
    media_type: str | None = None
    #: the prompt the upstream really used, when it rewrote it (DALL-E 3, Imagen)
    revised_prompt: str | None = None


@dataclass(slots=True)
class ImageResult:
    """An image generation answer: the images in order, and what they cost in tokens
    when the upstream counts tokens (``gpt-image-1``, Gemini image models)."""

    images: list[GeneratedImage]
    usage: Usage = field(default_factory=Usage)
    #: when the upstream made them (Unix seconds), or None
    created: int | None = None
    #: the upstream's other answer fields the client API also has (OpenAI's ``size``,
    #: ``quality``, ``background``, ``output_format``), keyed by the format that produced
    #: them (see ``Reasoning.source``)
    meta: dict[str, Any] = field(default_factory=dict)
