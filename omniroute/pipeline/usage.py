"""Usage on the record: token counts, the first content token, and an estimate when needed.

* Token counts come from the upstream's own usage, in every format and on every
  lane (:func:`set_usage`): input, output, cache read, cache write, reasoning.
* The time to the first content token (text, reasoning or a tool call) is taken
  once: on the pass-through lane by the client format's
  :attr:`~omniroute.formats.base.Format.content_pattern` over each chunk until it
  matches (no JSON parsing), on the translated lane from the first content event,
  and for a JSON answer it is the time the answer arrived.
* When the upstream sent no counts (or only some), the missing ones are estimated
  with :mod:`omniroute.tokens` from the request and the answer's text, and the
  record is marked ``usage_estimated``. :class:`StreamOutput` keeps the first
  :data:`KEEP_BYTES` of a stream for that: on the translated lane its text pieces,
  on the pass-through lane its blocks of frames (decoded only if the counts
  never came, and let go as soon as they did); past that size the estimate is
  scaled by the size the stream really had.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing

import orjson
from multidict import istr

from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.canonical import token_count
from omniroute.pipeline.attempts import ATTEMPT_ERROR_MAX
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.sse import events_of
from omniroute.storage import RequestRecord
from omniroute.tokens import estimate_request, estimate_text

log = logging.getLogger(__name__)

#: bytes of a pass-through stream kept for an estimate should its usage never come (a
#: longer stream's estimate is scaled by its size: memory stays bounded per stream)
KEEP_BYTES = 256 * 1024
_CONTENT_EVENTS = (c.TextDelta, c.ReasoningDelta, c.ToolArgsDelta)


def set_usage(record: RequestRecord, usage: c.Usage) -> None:
    """Copy an answer's token counts into the request record (those it knows)."""
    if usage.input_tokens is not None:
        record.prompt_tokens = token_count(usage.input_tokens)
    if usage.output_tokens is not None:
        record.completion_tokens = token_count(usage.output_tokens)
    if usage.cache_read_tokens is not None:
        record.cached_tokens = token_count(usage.cache_read_tokens)
    if usage.cache_write_tokens is not None:
        record.cache_write_tokens = token_count(usage.cache_write_tokens)
    if usage.reasoning_tokens is not None:
        record.reasoning_tokens = token_count(usage.reasoning_tokens)


def since(started: float) -> float:
    """Milliseconds from ``started`` (a ``time.perf_counter()``) to now."""
    return (time.perf_counter() - started) * 1000


def estimate_missing(
    record: RequestRecord, request: c.Request | None, outputs: Iterable[str]
) -> None:
    """Fill in the counts the upstream did not send, from the local tokenizer.

    :param request: the canonical request (None: the input count stays unknown).
    :param outputs: the answer's text pieces (text, reasoning, tool names and arguments).
    """
    if record.prompt_tokens is None and request is not None:
        record.prompt_tokens = estimate_request(request)
        record.usage_estimated = 1
    if record.completion_tokens is None:
        record.completion_tokens = sum(estimate_text(text) for text in outputs)
        record.usage_estimated = 1


def response_texts(response: c.Response) -> list[str]:
    """The text pieces of a whole answer, as :func:`estimate_missing` takes them."""
    out: list[str] = []
    for part in response.parts:
        if isinstance(part, (c.Text, c.Reasoning)):
            out.append(part.text)
        elif isinstance(part, c.ToolCall):
            out.append(part.name)
            out.append(part.arguments)
    return out


def request_of(fmt: Format, client: ClientRequest) -> c.Request | None:
    """The canonical form of a client request, for an estimate (None when it cannot be had)."""
    try:
        return fmt.decode_request(client)
    except Exception as exc:  # noqa: BLE001 - an estimate is best effort, never an error
        log.debug("no token estimate for the request: %s", exc)
        return None


def usage_complete(record: RequestRecord) -> bool:
    return record.prompt_tokens is not None and record.completion_tokens is not None


class StreamOutput:
    """What a streamed answer needs for its record, gathered as it passes.

    On the translated lane :meth:`events` sees canonical events: usage, the first
    content event, and the text pieces (an estimate's input). On the
    pass-through lane the chat operation keeps its blocks in :attr:`frames` until usage comes.
    """

    __slots__ = ("client", "fmt", "frames", "kept", "record", "request", "size", "started",
                 "texts")

    def __init__(
        self, record: RequestRecord, started: float, fmt: Format, *,
        request: c.Request | None = None, client: ClientRequest | None = None,
    ) -> None:
        """
        :param started: ``time.perf_counter()`` when the request arrived.
        :param fmt: the client's format (it decodes a pass-through stream's kept frames).
        :param request: the canonical request (translated lane), else ``client``: the
            client's request, decoded only for an estimate.
        """
        self.record = record
        self.started = started
        self.fmt = fmt
        self.request = request
        self.client = client
        #: text pieces of a translated stream, up to KEEP_BYTES characters
        self.texts: list[str] = []
        #: a pass-through stream's blocks of whole frames, one per socket read, up to
        #: KEEP_BYTES (dropped once the upstream's usage is complete)
        self.frames: list[bytes] = []
        #: what was kept (a pass-through stream's bytes, a translated one's characters), and
        #: the size of the whole stream in the same unit
        self.kept = 0
        self.size = 0

    async def events(self, events: AsyncIterator[c.Event]) -> AsyncIterator[c.Event]:
        """Pass ``events`` on, noting usage, the first content token and the text."""
        see = self.see
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                see(event)
                yield event

    def see(self, event: c.Event) -> None:
        """Note one event of a translated stream: usage, the first content token, text."""
        if isinstance(event, _CONTENT_EVENTS):
            if self.record.ttfc_ms is None:
                self.record.ttfc_ms = since(self.started)
            # (:meth:`_text`, written in: the call is most of its cost)
            piece = event.arguments if isinstance(event, c.ToolArgsDelta) else event.text
            size = len(piece)
            self.size += size
            if self.kept < KEEP_BYTES:
                self.texts.append(piece)
                self.kept += size
        elif isinstance(event, (c.Start, c.Finish)):
            set_usage(self.record, event.usage)
        elif isinstance(event, c.PartStart) and isinstance(event.part, c.ToolCall):
            if self.record.ttfc_ms is None:
                self.record.ttfc_ms = since(self.started)
            self._text(event.part.name)

    def _text(self, piece: str) -> None:
        """Keep a text piece for an estimate, up to KEEP_BYTES characters (beyond, only
        their number, to scale the estimate by)."""
        size = len(piece)
        self.size += size
        if self.kept < KEEP_BYTES:
            self.texts.append(piece)
            self.kept += size

    async def estimate(self) -> None:
        """The stream is over: estimate the counts the upstream did not send."""
        record = self.record
        if usage_complete(record):
            return
        texts, request = self.texts, self.request
        if self.frames and not texts:  # pass-through: read the kept frames now
            texts = await self._frame_texts()
        # only its beginning was kept (frames' bytes, or texts' characters): scale up
        scale = self.size / self.kept if self.size > self.kept > 0 else 1.0
        if request is None and self.client is not None and record.prompt_tokens is None:
            request = request_of(self.fmt, self.client)
        output_known = record.completion_tokens is not None
        estimate_missing(record, request, texts)
        if not output_known and scale > 1.0 and record.completion_tokens is not None:
            record.completion_tokens = round(record.completion_tokens * scale)

    async def _frame_texts(self) -> list[str]:
        async def frames() -> AsyncIterator[bytes]:
            for frame in frames_of(self.fmt, b"".join(self.frames)):
                yield frame

        collect = StreamOutput(RequestRecord("", 0.0, ""), self.started, self.fmt)
        try:
            async for _ in collect.events(self.fmt.decode_stream(frames())):
                pass
        except Exception as exc:  # noqa: BLE001 - a broken stream still gets what it had
            log.debug("estimate over a broken stream: %s", exc)
        return collect.texts


def frames_of(fmt: Format, data: bytes) -> list[bytes]:
    """A pass-through stream's bytes (whole frames) cut into the frames its format
    decodes: NDJSON lines, or SSE events."""
    if "ndjson" in fmt.stream_content_type:
        return [line + b"\n" for line in data.split(b"\n") if line.strip()]
    return events_of(data)


#: a stored user agent is cut to this many characters
USER_AGENT_MAX = 256


#: the usage headers' names (``istr``: aiohttp's ``CIMultiDict`` takes them as they are)
_COST, _TOKENS_IN = istr("X-OmniRoute-Response-Cost"), istr("X-OmniRoute-Tokens-In")
_TOKENS_OUT, _LATENCY = istr("X-OmniRoute-Tokens-Out"), istr("X-OmniRoute-Latency-Ms")


def usage_headers(record: RequestRecord, headers: dict[str, str]) -> None:
    """A JSON answer's cost, token counts and latency so far, as ``X-OmniRoute-*`` headers."""
    if record.cost_usd is not None:
        headers[_COST] = format_cost(record.cost_usd)
    if record.prompt_tokens is not None:
        headers[_TOKENS_IN] = str(record.prompt_tokens)
    if record.completion_tokens is not None:
        headers[_TOKENS_OUT] = str(record.completion_tokens)
    if record.ttfb_ms is not None:
        headers[_LATENCY] = str(round(record.ttfb_ms))


def format_cost(cost: float) -> str:
    """A cost in USD in plain decimal notation, to 1e-10 USD, without trailing zeros."""
    text = f"{cost:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def user_agent(value: str | None) -> str | None:
    return value if value is None or len(value) <= USER_AGENT_MAX else value[:USER_AGENT_MAX]


def complete(ctx: RequestContext, reply: Reply | None) -> None:
    """The record's last fields, once the request is over: the attempt log (with the
    answering target's final status) and the output rate."""
    record = ctx.record
    tries = ctx.tries
    if tries:
        if reply is not None and reply.target is not None:
            label = reply.target.label
            for entry in reversed(tries):
                if entry["target"] == label and entry["failure"] is None:
                    entry["status"] = record.status
                    if record.status >= 400:
                        entry["failure"] = record.error_class
                        if record.error:
                            entry["error"] = record.error[:ATTEMPT_ERROR_MAX]
                    break
        record.attempt_log = orjson.dumps(tries).decode()
    tokens, total = record.completion_tokens, record.latency_ms
    if tokens and total:
        first = record.ttfc_ms if record.stream else None
        generating = total - first if first is not None and total > first else total
        # to a hundredth, half up: round(x, 2) goes through decimal strings (~3k instructions)
        record.tokens_per_s = (int(tokens * 100_000 / generating + 0.5) / 100
                               if generating > 0 else None)
