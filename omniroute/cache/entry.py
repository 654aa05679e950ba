"""A cache entry: a canonical response, serialized compactly, and how it is replayed.

The bytes are one orjson object, versioned by its ``v`` field. Version 1 holds the
canonical response::

    {"v": 1, "model": <requested model>, "created": <epoch s>, "cost": <USD | null>,
     "expires": <epoch s | absent>,
     "response": {"id", "model", "parts": [[<kind>, {<fields>}], ...], "stop_reason",
                  "stop_sequence", "usage": {...}, "created", "meta"}}

Version 2 holds an answer as the upstream sent it on the pass-through lane, with
the name of its format: it is stored without being decoded, and decoded (by that
format's ``decode_response`` or ``decode_stream``) only when it is read, so a miss
costs no decoding::

    {"v": 2, "model", "created", "cost", "expires" (as in 1),
     "format": <format name>, "body": <the upstream's JSON answer, as it came>}
    {"v": 2, ..., "format": <format name>, "frames": "<the stream's frames, as they came>"}

Version 3 holds a stream's frames as they came too, as bytes after a head line, so
that storing them neither decodes nor escapes them (``#`` starts it: an orjson head
never holds a raw newline, so the first one ends it)::

    #{"v": 3, "model", "created", "cost", "expires" (as in 1), "format": <format name>}
    <the stream's frames, as they came>

Version 2 entries with ``frames`` (written before version 3) still load.

An entry is served only when its response is :func:`storable` (a version 2 entry is
checked when it is read): a truncated, failed or empty answer is never served.

A part is tagged with its kind (``text``, ``reasoning``, ``tool_call``,
``image``, ``file``) so it decodes to the same canonical class; ``cost`` is
what the answer cost when it was made (what a hit saves); ``expires`` is when
its TTL ends: past it the entry is a miss wherever it is still held, and a hit
found in a slower backend is promoted to a faster one for what is left of it,
not for a new TTL. An entry of another version, or one that does not decode,
reads as a miss: a format change never serves a broken answer.

Because the entry is canonical, a hit is answered in whatever client format
asked: a JSON body (``Format.encode_response``) or a stream of the events
:func:`replay` synthesises (``Format.encode_stream``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson

from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.pipeline.usage import frames_of
from omniroute.providers.canonical import collect, events_of

if TYPE_CHECKING:
    from omniroute.formats.base import Format

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: the version of an entry that holds the canonical response
VERSION = 1
#: the version of an entry that holds an upstream JSON answer as it came, and its format
BODY_VERSION = 2
#: the version of an entry that holds an upstream stream's frames as they came, after a
#: head line (``#`` and the head's JSON)
FRAMES_VERSION = 3

_KINDS: dict[type, str] = {c.Text: "text", c.Reasoning: "reasoning", c.ToolCall: "tool_call",
                           c.Image: "image", c.File: "file"}
_CLASSES: dict[str, Callable[..., Any]] = {kind: cls for cls, kind in _KINDS.items()}
#: the stop reasons of a complete answer (a truncated or failed one is never stored)
COMPLETE = frozenset({"end_turn", "stop_sequence", "tool_use"})


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer, read back."""

    response: c.Response
    #: the model the client requested when it was stored
    model: str
    #: when it was stored (epoch seconds)
    created: float
    #: what it cost then, in USD (None: unknown)
    cost: float | None
    #: when its TTL ends (epoch seconds; None: an entry written before this was kept)
    expires: float | None = None


def storable(response: c.Response) -> bool:
    """Whether ``response`` may be cached: complete (no ``length`` stop, no error) and not
    empty, with only parts an entry can hold."""
    if response.stop_reason not in COMPLETE or not response.parts:
        return False
    content = False
    for part in response.parts:
        if type(part) not in _KINDS:
            return False
        if isinstance(part, c.ToolCall) or (isinstance(part, c.Text) and part.text.strip()):
            content = True
    return content


def dump(response: c.Response, model: str, created: float, cost: float | None,
         expires: float | None = None) -> bytes:
    """The entry bytes of ``response`` (check :func:`storable` first)."""
    body = {"id": response.id, "model": response.model,
            "parts": [(_KINDS[type(part)], part) for part in response.parts],
            "stop_reason": response.stop_reason, "stop_sequence": response.stop_sequence,
            "usage": response.usage, "created": response.created, "meta": response.meta}
    head: dict[str, Any] = {"v": VERSION, "model": model, "created": created, "cost": cost}
    if expires is not None:
        head["expires"] = expires
    return orjson.dumps({**head, "response": body})


def dump_body(answer: bytes, fmt: str, model: str, created: float, cost: float | None,
              expires: float | None = None, *, stream: bool = False) -> bytes:
    """The entry bytes of an answer in format ``fmt`` kept as it came: a JSON body, or
    (``stream``) a stream's frames. Not decoded here: :func:`load` decodes it, and
    serves it only when it is :func:`storable`.

    A JSON body goes in as it is (``orjson.Fragment``, version 2): a body that is not
    JSON makes an entry that does not load, a miss. A stream's frames go after a head
    line (version 3), as bytes: neither decoded nor escaped.
    """
    # (one dict literal: the same bytes as filling it key by key, at a fraction of the cost)
    head: dict[str, Any] = (
        {"v": FRAMES_VERSION, "model": model, "created": created, "cost": cost,
         "expires": expires, "format": fmt} if stream else
        {"v": BODY_VERSION, "model": model, "created": created, "cost": cost,
         "expires": expires, "format": fmt, "body": orjson.Fragment(answer)})
    if expires is None:
        del head["expires"]
    if stream:
        return b"".join((b"#", orjson.dumps(head), b"\n", answer))
    return orjson.dumps(head)


#: what an entry of :func:`dump_body` adds to its answer, at most, besides its model's and
#: format's names (which a JSON string escapes in six bytes a character at most): the fixed
#: keys and punctuation (~70 bytes) and three numbers (orjson writes a float in 24
#: characters at most). An entry's size known without making it: ``len(answer) +
#: HEAD_BYTES + 6 * (len(fmt) + len(model))`` at most
HEAD_BYTES = 160


def _head(data: bytes) -> tuple[Any, bytes | None]:
    """An entry's JSON (a version 3 entry's head line) and, for version 3, the frames
    after it.

    :raises orjson.JSONDecodeError: it is not an entry.
    """
    if data[:1] != b"#":
        return orjson.loads(data), None
    cut = data.find(b"\n")
    if cut < 0:
        raise orjson.JSONDecodeError("an entry's head line without its end", "", 0)
    return orjson.loads(data[1:cut]), data[cut + 1:]


def load(data: bytes, formats: Mapping[str, Format] | None = None) -> Entry | None:
    """The entry in ``data``; None when it is of another version, does not decode, or
    (version 2) its answer is not :func:`storable`.

    :param formats: the loaded formats by name, which decode a version 2 entry's answer
        (None: such an entry reads as a miss).
    """
    try:
        raw, frames = _head(data)
        if not isinstance(raw, dict):
            return None
        version = raw.get("v")
        if version == VERSION:
            body = raw["response"]
            parts = [_CLASSES[kind](**fields) for kind, fields in body["parts"]]
            response = c.Response(
                body["id"], body["model"], parts, body["stop_reason"], body["stop_sequence"],
                c.Usage(**body["usage"]), body["created"], body["meta"])
        elif (version == BODY_VERSION and frames is None) or (
                version == FRAMES_VERSION and frames is not None):
            fmt = formats.get(raw["format"]) if formats is not None else None
            if fmt is None:
                return None
            decoded = _decoded(fmt, raw, frames)
            if decoded is None or not storable(decoded):
                return None
            response = decoded
        else:
            return None
        expires = raw.get("expires")
        return Entry(response, str(raw["model"]), float(raw["created"]), raw["cost"],
                     None if expires is None else float(expires))
    except (orjson.JSONDecodeError, GatewayError, KeyError, TypeError, ValueError):
        return None


def _decoded(fmt: Format, raw: dict[str, Any], stream: bytes | None) -> c.Response | None:
    """The response of a version 2 or 3 entry, decoded by its format (None: it does not).

    :param stream: a version 3 entry's frames.
    """
    try:
        if stream is not None or "frames" in raw:
            frames = frames_of(fmt, raw["frames"].encode() if stream is None else stream)
            return _settled(collect(fmt.decode_stream(_listed(frames))))
        return fmt.decode_response(orjson.dumps(raw["body"]))
    except GatewayError:
        return None
    except Exception:  # a format's bug must not fail the request: a miss, and logged
        log.exception("a cached %s answer does not decode", fmt.name)
        return None


def _settled(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never waits (a stream decoded from a list)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast("_T", done.value)
    coroutine.close()
    raise RuntimeError("decoding a cached stream waited")


async def _listed(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


class Loaded:
    """:func:`load`, remembering the entries read lately by their bytes: an answer served
    again is not decoded again (the same bytes are the same entry, whichever key or
    backend they came from). Bounded in entries and bytes, least recently used out.

    A remembered entry is shared by every hit that reads it: hits only read it.
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = 16 * 2**20,
                 formats: Mapping[str, Format] | None = None) -> None:
        """
        :param max_entries: entries remembered at most.
        :param max_bytes: their bytes at most; an entry larger than a sixteenth of it
            is decoded every time.
        :param formats: the loaded formats by name (a version 2 entry's answer).
        """
        self.formats = formats
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    def __call__(self, data: bytes) -> Entry | None:
        entry = self._entries.get(data)
        if entry is not None:
            self._entries.move_to_end(data)
            return entry
        entry = load(data, self.formats)
        if entry is not None and len(data) <= self.max_bytes // 16:
            self._entries[data] = entry
            self.size += len(data)
            while len(self._entries) > self.max_entries or self.size > self.max_bytes:
                old, _ = self._entries.popitem(last=False)
                self.size -= len(old)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


def header(data: bytes, formats: Mapping[str, Format] | None = None) -> dict[str, Any]:
    """An entry's model, creation time, cost and version without its response (for
    listings); an entry :func:`load` does not read is ``unreadable``."""
    entry = load(data, formats)
    if entry is None:
        return {"model": None, "created": None, "version": "unreadable"}
    return {"model": entry.model, "created": entry.created, "cost": entry.cost,
            "version": _head(data)[0]["v"]}


async def replay(response: c.Response, first: Callable[[], None] | None = None
                 ) -> AsyncIterator[c.Event]:
    """The stream events of ``response``: Start, each part's start, delta and stop, Finish.

    :param first: called once before the first content event (the record's time to
        the first content token).
    """
    for event in events_of(response):  # (its own: :func:`load` builds one per lookup)
        if first is not None and isinstance(event, c.PartStart):
            first()
            first = None
        yield event
