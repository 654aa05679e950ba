"""The plain objects of one request: its context, and the reply an operation or a stage makes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from omniroute.auth.base import Principal
from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import Format
from omniroute.storage import RequestRecord

if TYPE_CHECKING:
    from omniroute.pipeline.stages import StageRun
    from omniroute.resilience import Attempt
    from omniroute.routing import Route, Target
    from omniroute.sharedstate import RequestBatch


@dataclass(slots=True, init=False)
class RequestContext:
    """Everything the pipeline knows about one request, filled in as it goes.

    Built by :func:`omniroute.pipeline.serve` before the body is read; the
    operation fills ``model`` and ``stream`` (:meth:`Operation.inspect`), the
    pipeline ``route`` and ``session``. Stages and operations read it and may
    replace ``body`` (a stage that adds stored history does).
    """

    principal: Principal
    #: the client's wire format: it decodes the request and renders the answer and errors
    fmt: Format
    record: RequestRecord
    headers: Mapping[str, str]
    query: Mapping[str, str]
    # (the fields up to ``started`` are given at construction, in order: no keywords,
    # which would cost every request a dict)
    #: the model / stream flag the URL names (Gemini), and the provider prefix of
    #: ``/v1/providers/{prefix}/...`` routes
    path_model: str | None = None
    path_stream: bool | None = None
    prefix: str | None = None
    #: ``time.perf_counter()`` when the request arrived
    started: float = 0.0
    #: the client's JSON body (a stage may replace it; never mutate it in place)
    body: dict[str, Any] = field(default_factory=dict)
    #: the size of the client's body in bytes, as read (a token estimate's input)
    body_bytes: int = 0
    #: the body's bytes as read, and the object they parsed to (None: not a JSON body);
    #: ``body is as_read[1]`` while no stage replaced the client's own body
    as_read: tuple[bytes, dict[str, Any]] | None = None
    model: str = ""
    stream: bool = False
    route: Route | None = None
    session: str | None = None
    #: the request in the canonical model, once an operation decoded it (at most once)
    canonical: c.Request | None = None
    #: an operation's own reading of the body, when it is not a chat request (embeddings)
    payload: Any = None
    #: the stages taking part in this request (see :class:`~omniroute.pipeline.stages.Stage`)
    runs: list[StageRun] = field(default_factory=list)
    #: every target tried: ``{"target", "failure", "status", "ms", "error"?}`` (the
    #: record's attempt log)
    tries: list[dict[str, Any]] = field(default_factory=list)
    #: set when the gateway ends the request's stream itself (shutting down): the error
    #: the stream ends with
    ended_by: GatewayError | None = None
    #: the error the request failed with (raised, or that ended its stream), once it did
    error: GatewayError | None = None
    #: headers a stage adds to the answer (``X-OmniRoute-Budget-Warning``); None: none
    reply_headers: dict[str, str] | None = None
    #: a stage that wants the canonical answer (the response cache on a miss); None: none
    tap: AnswerTap | None = None
    #: the answer is a binary body relayed as it arrives (speech audio), not a stream of
    #: frames: nothing can be added to it (no progress frames), and a failure after its
    #: first byte cuts the connection instead of writing the format's error frame
    binary: bool = False
    #: the request's shared-state work before dispatch (``state_url`` only; see
    #: :class:`~omniroute.sharedstate.RequestBatch`)
    batch: RequestBatch | None = None

    def __init__(self, principal: Principal, fmt: Format, record: RequestRecord,
                 headers: Mapping[str, str], query: Mapping[str, str],
                 path_model: str | None = None, path_stream: bool | None = None,
                 prefix: str | None = None, started: float = 0.0) -> None:
        # written out, not dataclass's: the defaults as constants and the lists and dict
        # made in place, where dataclass's __init__ tests each default_factory argument
        # and calls its factory (some 30 bytecodes and three calls a request); the fields'
        # defaults above are what this sets (tests/test_pipeline.py checks)
        self.principal = principal
        self.fmt = fmt
        self.record = record
        self.headers = headers
        self.query = query
        self.path_model = path_model
        self.path_stream = path_stream
        self.prefix = prefix
        self.started = started
        self.body = {}
        self.body_bytes = 0
        self.as_read = None
        self.model = ""
        self.stream = False
        self.route = None
        self.session = None
        self.canonical = None
        self.payload = None
        self.runs = []
        self.tries = []
        self.ended_by = None
        self.error = None
        self.reply_headers = None
        self.tap = None
        self.binary = False
        self.batch = None


class AnswerTap(Protocol):
    """Sees the answer the chat operation serves (the response cache keeps it): the
    canonical one on the translated and canonical lanes, the upstream's own JSON body on
    the pass-through lane, JSON or a stream's blocks of frames. Only the served answer's:
    a call that lost a hedged race is never shown (its stream is never iterated)."""

    def response(self, response: c.Response) -> None:
        """A whole (JSON) answer, decoded."""

    def passed(self, body: bytes) -> None:
        """A whole (JSON) answer on the pass-through lane, as the upstream sent it (told
        here, synchronously, not through an awaited ``StageRun.answer``: a run that needs
        no other hook keeps the pipeline off its loops over the runs)."""

    def events(self, events: AsyncIterator[c.Event]) -> AsyncIterator[c.Event]:
        """A streamed answer's events: return an iterator that passes them all on."""

    def chunk(self, chunk: bytes) -> None:
        """A block of a pass-through stream's frames (as the client gets it: without a
        frame the gateway cut out), when it is handed to the relay, before its write."""


@runtime_checkable
class Closable(Protocol):
    """A stream that can be ended early (an async generator): ``Reply.frames`` and
    ``Reply.source`` usually are, and are closed this way when an answer is dropped."""

    def aclose(self) -> Awaitable[object]: ...


class KnowsItsEnd:
    """A stream of chunks that can tell, once it handed a chunk out, that the chunk was its
    last (the next ``__anext__`` ends the iteration without waiting): the relay then
    writes that chunk with the stream's end, in one write, so the client is woken once,
    not twice. The pass-through lane's iterator declares it (by subclassing);
    :func:`~omniroute.pipeline.relay.relay` asks ``isinstance(frames, KnowsItsEnd)``.

    A plain base class rather than a run-time checkable ``typing.Protocol`` or an
    ``abc.ABC``: ``isinstance`` against a plain class walks the type's MRO in C, where
    either of the others runs Python code (``__instancecheck__``) on every stream.
    """

    __slots__ = ()

    def ended(self) -> bool:
        """True when the chunk handed out last was the stream's last."""
        raise NotImplementedError


@dataclass(slots=True)
class Reply:
    """An answer to send: a JSON ``body``, or the ``frames`` of a stream.

    Operations make one per target that answered; a stage makes one when it
    answers a request itself (a cache hit, a refusal). ``frames`` is an async
    iterator of bytes, each item written in one write; the pipeline closes it
    (and ``source`` under it) when the answer ends, however it ends.
    """

    body: bytes | None = None
    frames: AsyncIterator[bytes] | None = None
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: the upstream's own iterator under ``frames``, of frames or of canonical events
    #: (closed with it)
    source: AsyncIterator[Any] | None = None
    #: drops the upstream connection at once, even if ``frames`` never started
    close: Callable[[], None] | None = None
    #: why the answer failed after its first byte (charged to the account at the end)
    failure: BaseException | None = None
    #: the target that answered, and its resilience attempt (open until the answer ends)
    target: Target | None = None
    attempt: Attempt | None = None
    #: completes the record once the answer has ended (a stream's usage estimate)
    on_end: Callable[[], Awaitable[None]] | None = None
    #: what a target's answer writes into the request's shared state (the record's usage,
    #: the cache's tap), applied by the pipeline only to the answer it serves: a call
    #: that lost a hedged race may finish beside the winner, and must leave no trace
    on_win: Callable[[], None] | None = None
