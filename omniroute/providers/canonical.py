"""Providers that speak the canonical model: the easy way to write one.

A :class:`CanonicalProvider` has no wire format of its own. It receives the
request as a :class:`~omniroute.formats.canonical.Request` and answers with a
:class:`~omniroute.formats.canonical.Response` (:meth:`~CanonicalProvider.complete`)
or an async iterator of :data:`~omniroute.formats.canonical.Event`
(:meth:`~CanonicalProvider.stream`); the client's format encodes the answer, so
every client API can call it. Implement either method: the other one is built
from it (a stream is replayed from the complete answer, a complete answer is
collected from the stream)::

    class Shout(CanonicalProvider):
        type = "shout"
        requires_credentials = False

        async def complete(self, request: c.Request) -> c.Response:
            text = request.messages[-1].parts[0].text.upper()
            return c.Response(id="shout-1", model=request.model, parts=[c.Text(text)])

The pipeline calls them through :func:`call_complete` and :func:`call_stream`,
the canonical lane's counterpart of :class:`~omniroute.providers.http.HTTPProvider`'s
network layer: every wait is bounded by the runtime timeouts, the answer's
shape is checked, and a stream is returned only once its first event exists,
so an error raised before it still lets the gateway try another target.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp

from omniroute.errors import GatewayError, UpstreamError, UpstreamTimeout
from omniroute.formats import canonical as c
from omniroute.providers.base import Provider, Timeouts

#: the ``format`` of a provider that speaks the canonical model (no format plugin has it)
CANONICAL = "canonical"


class CanonicalProvider(Provider):
    """Base class of provider types that take and give canonical objects.

    Subclass it, set ``type`` (and the other class attributes of
    :class:`~omniroute.providers.base.Provider`), and implement :meth:`complete`,
    :meth:`stream`, or both. Raise a :class:`~omniroute.errors.GatewayError`
    (``UpstreamStatusError``, ``UpstreamError``, ``UpstreamTimeout``) when the
    request fails: its type and status decide whether the gateway tries the next
    target. Raise it before a stream's first event to keep that choice open.
    """

    format: ClassVar[str] = CANONICAL

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__ and not _implements(cls, "complete") \
                and not _implements(cls, "stream"):
            raise TypeError(f"{cls.__qualname__} must implement complete() or stream()")

    async def complete(self, request: c.Request) -> c.Response:
        """The whole answer to ``request`` (``request.model`` is the upstream model name).

        The default collects :meth:`stream`.
        """
        if not _implements(type(self), "stream"):
            raise NotImplementedError(f"{type(self).__qualname__} implements neither "
                                      "complete() nor stream()")
        return await collect(self.stream(request))

    async def stream(self, request: c.Request) -> AsyncIterator[c.Event]:
        """The answer to ``request`` as events: ``Start`` first, ``Finish`` last.

        Follow the conventions of :mod:`omniroute.formats.canonical` (parts by
        index, ``PartStart`` before their deltas). The default replays :meth:`complete`.
        """
        if not _implements(type(self), "complete"):
            raise NotImplementedError(f"{type(self).__qualname__} implements neither "
                                      "complete() nor stream()")
        for event in events_of(_checked(self, await self.complete(request))):
            yield event


def _implements(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(CanonicalProvider, name)


# ----------------------------------------------------------------------------- the calls

async def call_complete(
    provider: CanonicalProvider, request: c.Request, timeouts: Timeouts
) -> c.Response:
    """``provider.complete(request)``, bounded by the total timeout, its answer checked."""
    try:
        async with asyncio.timeout(timeouts.total):
            response = await provider.complete(request)
    except TimeoutError:
        raise UpstreamTimeout(f"{_name(provider)} did not answer within "
                              f"{timeouts.total:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _unreachable(provider, exc) from None
    return _checked(provider, response)


async def call_stream(
    provider: CanonicalProvider, request: c.Request, timeouts: Timeouts
) -> AsyncIterator[c.Event]:
    """``provider.stream(request)``, returned once its first event is there.

    The first event must come within ``first_byte`` seconds and be a ``Start``;
    each later one within ``idle`` seconds, the whole stream within ``total``.
    Close the returned iterator (``contextlib.aclosing``): that closes the
    provider's own.
    """
    events = provider.stream(request)
    try:
        async with asyncio.timeout(timeouts.first_byte):
            first = await anext(events)
    except StopAsyncIteration:
        raise UpstreamError(f"{_name(provider)} sent an empty stream") from None
    except TimeoutError:
        await _aclose(events)
        raise UpstreamTimeout(f"{_name(provider)} sent no event within "
                              f"{timeouts.first_byte:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        await _aclose(events)
        raise _unreachable(provider, exc) from None
    except BaseException:
        await _aclose(events)
        raise
    if not isinstance(first, c.Start):
        await _aclose(events)
        raise UpstreamError(f"{_name(provider)} began its stream with a "
                            f"{type(first).__name__}, not a Start event")
    return _bounded(provider, first, events, timeouts)


async def _bounded(
    provider: CanonicalProvider, first: c.Start, events: AsyncIterator[c.Event],
    timeouts: Timeouts,
) -> AsyncIterator[c.Event]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.total
    try:
        yield first
        while True:
            try:
                async with asyncio.timeout_at(min(loop.time() + timeouts.idle, deadline)):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise UpstreamTimeout(f"{_name(provider)}'s stream exceeded "
                                          f"{timeouts.total:g}s in total") from None
                raise UpstreamTimeout(f"{_name(provider)}'s stream stalled: no event for "
                                      f"{timeouts.idle:g}s") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _unreachable(provider, exc) from None
            yield event
    finally:
        await _aclose(events)


def _checked(provider: Provider, response: Any) -> c.Response:
    if not isinstance(response, c.Response):
        raise UpstreamError(f"{_name(provider)} answered with a {type(response).__name__}, "
                            "not a canonical Response")
    return response


async def _aclose(events: AsyncIterator[Any]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


def _name(provider: Provider) -> str:
    return f"provider {provider.type!r} (connection {provider.connection.name!r})"


def _unreachable(provider: Provider, exc: BaseException) -> GatewayError:
    """A network failure inside a provider: the provider's failure, not the client's leaving."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return UpstreamError(f"{_name(provider)} failed: {detail}")


# ----------------------------------------------------------------------------- conversions

def events_of(response: c.Response) -> list[c.Event]:
    """The events of a stream that gives ``response``: one delta per part."""
    events: list[c.Event] = [c.Start(response.id, response.model, created=response.created)]
    for index, part in enumerate(response.parts):
        if isinstance(part, c.Text):
            events += [c.PartStart(index, c.Text("", part.cache_control, part.meta)),
                       c.TextDelta(index, part.text)]
        elif isinstance(part, c.ToolCall):
            events += [c.PartStart(index, dataclasses.replace(part, arguments="")),
                       c.ToolArgsDelta(index, part.arguments)]
        elif isinstance(part, c.Reasoning):
            events.append(c.PartStart(index, c.Reasoning(redacted=part.redacted,
                                                         source=part.source, meta=part.meta)))
            if part.text or part.signature or part.encrypted:
                events.append(c.ReasoningDelta(index, part.text, part.signature,
                                               part.encrypted))
            if part.summary:
                events.append(c.ReasoningDelta(index, summary="\n\n".join(part.summary)))
        else:
            raise UpstreamError(f"a {type(part).__name__} part cannot be streamed")
        events.append(c.PartStop(index))
    events.append(c.Finish(response.stop_reason, response.usage, response.stop_sequence))
    return events


async def collect(events: AsyncIterator[c.Event]) -> c.Response:
    """The complete response a stream of events gives (the stream is closed after)."""
    response: c.Response | None = None
    parts: dict[int, c.Text | c.Reasoning | c.ToolCall] = {}
    try:
        async for event in events:
            if isinstance(event, c.Start):
                response = c.Response(event.id, event.model, stop_reason=None,
                                      created=event.created)
                response.usage.merge(event.usage)
            elif response is None:
                raise UpstreamError(f"the stream began with a {type(event).__name__}, "
                                    "not a Start event")
            elif isinstance(event, c.PartStart):
                part = dataclasses.replace(event.part, meta=dict(event.part.meta))
                if isinstance(part, c.Reasoning):
                    part.summary = list(part.summary)
                parts[event.index] = part
            elif isinstance(event, c.Finish):
                response.stop_reason, response.stop_sequence = (event.stop_reason,
                                                                event.stop_sequence)
                response.usage.merge(event.usage)
            elif not isinstance(event, c.PartStop):
                _apply(parts, event)
    finally:
        await _aclose(events)
    if response is None:
        raise UpstreamError("the stream ended before its Start event")
    response.parts = [parts[i] for i in sorted(parts)]
    return response


def _apply(parts: dict[int, c.Text | c.Reasoning | c.ToolCall], event: c.Event) -> None:
    part = parts.get(getattr(event, "index", -1))
    if isinstance(event, c.TextDelta) and isinstance(part, c.Text):
        part.text += event.text
    elif isinstance(event, c.ToolArgsDelta) and isinstance(part, c.ToolCall):
        part.arguments += event.arguments
    elif isinstance(event, c.ReasoningDelta) and isinstance(part, c.Reasoning):
        part.text += event.text
        if event.signature:
            part.signature = (part.signature or "") + event.signature
        if event.encrypted:
            part.encrypted = (part.encrypted or "") + event.encrypted
        if event.summary:  # pieces of one summary text
            part.summary[-1:] = ["".join(part.summary[-1:]) + event.summary]
    else:
        raise UpstreamError(f"a {type(event).__name__} for part {getattr(event, 'index', '?')} "
                            "that did not start, or is of another kind")
