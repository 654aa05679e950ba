"""What every fake upstream shares; each provider's fake adds only its wire format.

A fake is an in-process aiohttp app that answers like one provider's API. This
module holds everything that is the same for all of them: the ``script`` of
behaviours, request recording, the faults, the auth check and the frame
writers. A provider's module then holds its routes, reply bodies, stream events
and error shapes. Sketch of a fake (the real ones are ``*_upstream.py`` here)::

    @dataclass
    class Behaviour(base.Behaviour):       # the shared knobs, plus this format's own
        finish_reason: str | None = None

    hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)

    class FakeAcme(FakeUpstream[Behaviour]):
        behaviour = Behaviour
        key_in = ("bearer",)               # where the API key travels
        respond_json = staticmethod(_json)  # a JSON answer with Acme's usual headers

        def __init__(self, *, api_key="acme-key", models=("acme-1",), **knobs):
            super().__init__(api_key=api_key, models=models, **knobs)
            self.app.router.add_post("/v1/generate", self._handle)

        def _auth_missing(self) / _auth_wrong(self, key) -> web.Response: ...  # Acme's 401s
        def _failure(self, status) -> Behaviour: ...  # what fail_rate answers with

        async def _serve(self, request, rec, b):
            if (early := await self._before(request, b)) is not None:
                return early                   # hang before headers, scripted HTTP error, auth
            ...                                # Acme's own 400s, in Acme's error shape
            if b.garbage is not None:
                return self._garbage(b, stream)
            if not stream:
                return await self._send_whole(request, b, orjson.dumps(answer))
            return await self._send_stream(request, b, [sse(e) for e in events],
                                           headers, lambda sent: sse({"error": b.error}))

``script`` is a queue: each answered request pops one ``Behaviour`` (an empty
queue means the default reply). Every fake's module exports the same fault
helpers, each for one request:

- ``hang_before_headers(seconds)``: wait before answering at all.
- ``hang_mid_stream(after_chunks, seconds)``: pause once ``after_chunks`` frames are
  written, then go on normally.
- ``drop_mid_stream(after_chunks)``: abort the TCP connection there.
- ``garbage(body=None)``: a 200 whose body does not parse (a non-SSE / non-NDJSON
  stream body, or a JSON body that is not JSON).
- ``slow(delay_per_chunk)``: wait that long before each frame but the first.

``after_chunks`` counts frames already written. On a non-stream request hang and
drop act after half the JSON body is written, and a non-stream answer waits
``delay * chunks`` before it starts.

Knobs every fake's constructor takes: ``api_key`` (None turns the auth check
off), ``models``, ``chunks`` (default pieces per text), ``delay`` (default seconds
between frames), ``latency`` (seconds waited before answering each request,
scripted or not) and ``fail_rate``: the probability that a request the script
does not answer gets an HTTP 500 or 503 in the provider's error shape instead of
the default reply, drawn from ``random.Random(seed)`` so a seeded fake fails the
same requests every run (``injected_failures`` counts them).

``requests`` records every request. ``closed_streams`` counts answered requests
whose client went away before the answer finished (also while hanging before
headers or waiting out ``latency``); ``stream_closed`` is set each time.
Fake-initiated drops don't count.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import orjson
from aiohttp import web

ALNUM = string.ascii_letters + string.digits


@dataclass
class Recorded:
    """One request seen by the fake (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any  # the parsed body, or None when it is empty or not JSON
    body: bytes
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Behaviour:
    """How to answer one request: the knobs every fake has (a fake subclasses it).

    ``error`` is the provider's error object: with ``error_after`` unset it is the
    body of an HTTP ``status`` answer with ``headers``, otherwise the error frame
    written after ``error_after`` frames.
    """

    text: str | None = None
    chunks: int | None = None
    delay: float | None = None
    tool_calls: int | list[dict[str, Any]] | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # overrides of the usage fields
    status: int = 200
    error: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_before_headers: float = 0.0
    hang_after: int | None = None
    hang_seconds: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    garbage: bytes | None = None


B = TypeVar("B", bound=Behaviour)


def fault_helpers(cls: type[B]) -> tuple[
    Callable[[float], B], Callable[[int, float], B], Callable[[int], B],
    Callable[..., B], Callable[[float], B],
]:
    """``hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow`` building ``cls``."""

    def hang_before_headers(seconds: float) -> B:
        return cls(hang_before_headers=seconds)

    def hang_mid_stream(after_chunks: int, seconds: float) -> B:
        return cls(hang_after=after_chunks, hang_seconds=seconds)

    def drop_mid_stream(after_chunks: int) -> B:
        return cls(drop_after=after_chunks)

    def garbage(body: bytes | None = None) -> B:
        return cls(garbage=body or b"")

    def slow(delay_per_chunk: float) -> B:
        return cls(delay=delay_per_chunk)

    return hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow


# ----------------------------------------------------------------------------- writers

def sse(data: Any, event: str | None = None, *, end: bytes = b"\n\n") -> bytes:
    """One server-sent event whose data is ``data`` as JSON (Gemini ends events with CRLFs)."""
    head = b"event: " + event.encode() + b"\n" if event is not None else b""
    return head + b"data: " + orjson.dumps(data) + end


def ndjson(obj: Any) -> bytes:
    """One line of a newline-delimited JSON stream."""
    return orjson.dumps(obj) + b"\n"


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None, *,
                  charset: str | None = None) -> web.Response:
    """A JSON answer; ``obj`` may be bytes already (a prepared or deliberately broken body)."""
    return web.Response(status=status, body=obj if isinstance(obj, bytes) else orjson.dumps(obj),
                        content_type="application/json", charset=charset, headers=headers)


# ----------------------------------------------------------------------------- reply pieces

def rand(n: int, alphabet: str = ALNUM) -> str:
    """``n`` random characters, for ids that look like the provider's."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def tokens(s: str) -> int:
    """The fakes' token count: about four characters a token, at least one."""
    return max(1, (len(s) + 3) // 4)


def split(s: str, n: int) -> list[str]:
    """Split ``s`` into ``min(n, len(s))`` contiguous non-empty pieces (``[""]`` for "")."""
    n = max(1, min(n, len(s)))
    return [s[i * len(s) // n : (i + 1) * len(s) // n] for i in range(n)] if s else [""]


def pick(tools: list[Any], n: int, fallback: Any) -> list[Any]:
    """``n`` tools to call: the declared ones in turn, or ``fallback`` when none is declared."""
    return [(tools or [fallback])[i % max(1, len(tools))] for i in range(n)]


def fake_args(schema: Any) -> dict[str, Any]:
    """Deterministic arguments satisfying a schema's properties (JSON Schema or Gemini's
    upper-case OpenAPI types): an enum's first value, else one value of the type."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    by_type: dict[str, Any] = {"number": 1, "integer": 1, "boolean": True, "array": [],
                               "object": {}}
    args: dict[str, Any] = {}
    for name, prop in (props or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        kind = prop.get("type")
        default = "Paris" if name in ("location", "city") else "test"
        value = by_type.get(kind.lower(), default) if isinstance(kind, str) else default
        args[name] = (prop.get("enum") or [value])[0]
    return args or {"location": "Paris"}


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """The fakes' embedding of ``text``: derived from its length, so tests can predict it."""
    return [(len(text) + k) / 100 for k in range(dimensions)]


#: the first bytes of every PNG file
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_image_bytes(prompt: str, index: int = 0) -> bytes:
    """The fakes' image ``index`` of ``prompt``: PNG's signature, then the index and the
    prompt, so tests can predict it (and media types are sniffed as PNG)."""
    return PNG_MAGIC + f"{index}:{prompt}".encode()


def fake_image(prompt: str, index: int = 0) -> str:
    """:func:`fake_image_bytes` as base64, as image APIs send it."""
    return base64.b64encode(fake_image_bytes(prompt, index)).decode()


# ----------------------------------------------------------------------------- the base

class FakeUpstream(Generic[B]):
    """The plumbing of a fake upstream (see the module docstring for a sketch)."""

    #: the fake's ``Behaviour`` class: an empty script answers with ``behaviour()``
    behaviour: ClassVar[type[Any]] = Behaviour
    #: where a key is read: "bearer" (``Authorization: Bearer``), "token"
    #: (``Authorization: Token``, Deepgram's), "x-api-key", "x-goog-api-key" (headers) or
    #: "?key" (the query); a key in any of them is checked
    key_in: ClassVar[tuple[str, ...]] = ("bearer",)
    #: the content type of a stream answer, and the body ``garbage()`` streams by default
    stream_type: ClassVar[str] = "text/event-stream"
    stream_garbage: ClassVar[bytes] = (
        b"<html>502 Bad Gateway</html>\r\nnot an event stream {{\x00\n\n")
    #: a JSON answer with the provider's usual response headers (``json_response`` + headers)
    respond_json: Callable[..., web.Response] = staticmethod(json_response)

    def __init__(
        self,
        *,
        api_key: str | None,
        models: Sequence[str],
        chunks: int = 4,
        delay: float = 0.0,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate is a probability (0..1)")
        self.api_key = api_key
        self.models = list(models)
        self.chunks = chunks  # default pieces per text
        self.delay = delay  # default seconds between frames
        self.latency = latency  # seconds before answering each request
        self.fail_rate = fail_rate  # share of unscripted requests answered 500/503
        self.rng = random.Random(seed)
        self.injected_failures = 0
        self.base_url = ""  # for tests: set it once the app is served
        self.requests: list[Recorded] = []
        self.script: list[B] = []
        self.closed_streams = 0
        self.stream_closed = asyncio.Event()
        self.app = web.Application()

    # ---- hooks a fake fills in ------------------------------------------------------
    async def _serve(self, request: web.Request, rec: Recorded, b: B) -> web.StreamResponse:
        """Answer one request as scripted by ``b``."""
        raise NotImplementedError

    def _auth_missing(self) -> web.Response:
        """The provider's answer to a request without a key."""
        raise NotImplementedError

    def _auth_wrong(self, key: str) -> web.Response:
        """The provider's answer to a wrong ``key``."""
        return self._auth_missing()

    def _failure(self, status: int) -> B:
        """The provider's 500 or 503, for ``fail_rate``."""
        raise NotImplementedError

    def _error_body(self, b: B) -> Any:
        """The body of ``b``'s HTTP error answer."""
        return {"error": b.error}

    # ---- requests -------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        rec = Recorded(request.method, request.path,
                       {k.lower(): v for k, v in request.headers.items()}, parsed, raw,
                       dict(request.query))
        self.requests.append(rec)
        return rec

    def _next(self) -> B:
        """The next scripted behaviour, or (``fail_rate`` of the time) a random 500 or 503."""
        if self.script:
            return self.script.pop(0)
        if not self.fail_rate or self.rng.random() >= self.fail_rate:
            return self.behaviour()
        self.injected_failures += 1
        return self._failure(500 if self.rng.random() < 0.5 else 503)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """A route handler: record the request, then :meth:`_answer` it."""
        return await self._answer(request, await self._record(request))

    async def _answer(self, request: web.Request, rec: Recorded) -> web.StreamResponse:
        """Pop a behaviour and serve it, counting a client that goes away meanwhile."""
        b = self._next()
        try:
            if self.latency:
                await self._sleep(request, self.latency)
            return await self._serve(request, rec, b)
        except ConnectionResetError:
            self._client_gone()
            return web.Response(status=499)  # never reaches the (gone) client
        except asyncio.CancelledError:
            self._client_gone()
            raise

    def _client_gone(self) -> None:
        self.closed_streams += 1
        self.stream_closed.set()

    def _auth_error(self, request: web.Request) -> web.Response | None:
        """The provider's refusal when the key is missing or wrong, else None."""
        if self.api_key is None:
            return None
        given = []
        for place in self.key_in:
            if place in ("bearer", "token"):  # Authorization: Bearer KEY / Token KEY
                value = request.headers.get("Authorization", "")
                scheme = "Bearer " if place == "bearer" else "Token "
                value = value[len(scheme):] if value.startswith(scheme) else value
            elif place == "?key":
                value = request.query.get("key", "")
            else:
                value = request.headers.get(place, "")
            if value:
                given.append(value)
        if not given:
            return self._auth_missing()
        return None if self.api_key in given else self._auth_wrong(given[0])

    async def _before(self, request: web.Request, b: B) -> web.Response | None:
        """What comes before the provider's own checks: the hang before headers, a scripted
        HTTP error, then the auth check. None when the request goes on."""
        if b.hang_before_headers:
            await self._sleep(request, b.hang_before_headers)
        if b.error is not None and b.error_after is None:
            return self.respond_json(b.status, self._error_body(b), b.headers)
        return self._auth_error(request)

    # ---- answers --------------------------------------------------------------------
    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, raising ConnectionResetError as soon as the client goes away."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            left = end - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.01))

    def _delay(self, b: B) -> float:
        return b.delay if b.delay is not None else self.delay

    @staticmethod
    def _drop(request: web.Request) -> None:
        assert request.transport is not None
        request.transport.abort()

    def _garbage(self, b: B, stream: bool) -> web.Response:
        """A 200 whose body does not parse as what the client asked for."""
        if stream:
            return web.Response(body=b.garbage or self.stream_garbage,
                                headers={"Content-Type": self.stream_type})
        return self.respond_json(
            200, b.garbage or b"<html><body>upstream says hi</body></html> {not json")

    async def _send_whole(self, request: web.Request, b: B, payload: bytes,
                          headers: dict[str, str] | None = None) -> web.StreamResponse:
        """A non-stream answer, with ``b``'s delay, hang and drop."""
        delay = self._delay(b)
        if delay:
            await self._sleep(request, delay * (b.chunks or self.chunks))
        if b.hang_after is None and b.drop_after is None:
            return self.respond_json(200, payload, headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if b.drop_after is not None:
            self._drop(request)
            return resp
        await self._sleep(request, b.hang_seconds)
        await resp.write(payload[len(payload) // 2 :])
        await resp.write_eof()
        return resp

    async def _send_stream(self, request: web.Request, b: B, frames: list[bytes],
                           headers: dict[str, str],
                           error_frame: Callable[[int], bytes]) -> web.StreamResponse:
        """Write ``frames`` with ``b``'s delay, hang, drop and mid-stream error
        (``error_frame(sent)``: the frame that replaces the rest, then the body ends)."""
        delay = self._delay(b)
        resp = web.StreamResponse(headers={"Content-Type": self.stream_type, **headers})
        await resp.prepare(request)
        for sent, frame in enumerate(frames):
            if b.hang_after == sent:
                await self._sleep(request, b.hang_seconds)
            if b.drop_after == sent:
                self._drop(request)
                return resp
            if b.error_after == sent:
                await resp.write(error_frame(sent))
                break
            await self._sleep(request, delay if sent else 0.0)
            await resp.write(frame)
        await resp.write_eof()
        return resp
