"""Progress frames on a stream: ``X-OmniRoute-Progress: true``.

A streaming request with the header gets, every ``progress_interval`` seconds, a
progress frame (also while no upstream chunk comes), and one with ``done: true``
after the stream's last chunk::

    : progress {"tokens":42,"bytes":9120,"elapsed_ms":2004,"done":false}

The frame is an SSE comment line, which the official SDKs of the formats that say
so (:attr:`~omniroute.formats.base.Format.sse_comments`: OpenAI chat and legacy
completions, Responses, Anthropic) skip; the answer carries
``X-OmniRoute-Progress: enabled``. google-genai parses every line of a stream as
JSON (an SSE comment or a named event breaks it) and NDJSON has no comments: Gemini
and Ollama streams get no progress frames and ``X-OmniRoute-Progress: unsupported``.

``tokens`` is the upstream's output count once it sent one, else an estimate: the
content deltas seen so far (the format's ``content_pattern``; real upstreams send
about one token per delta), or ``bytes / 4`` for a format without a pattern.
A request without the header costs one header lookup; one with it, a future per
chunk (``asyncio.wait`` on the next chunk with the time left to the next frame).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson
from multidict import istr

from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.stages import Stage, StageRun

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.formats.base import Format
    from omniroute.pipeline.operation import Operation

PROGRESS_HEADER = "X-OmniRoute-Progress"
_PROGRESS = istr(PROGRESS_HEADER)  # (looked up without being case-folded each time)
_ON = ("true", "1", "yes", "on")


class ProgressStage(Stage):
    """Adds progress frames to the streams that ask for them (see the module)."""

    name = "progress"

    def __init__(self, settings: Callable[[], Settings],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """
        :param settings: the live runtime settings (``progress_interval``).
        :param clock: seconds, the clock of ``RequestContext.started``.
        """
        self.settings = settings
        self.clock = clock

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        if not ctx.stream or ctx.binary:  # audio bytes have no room for a comment
            return None
        asked = ctx.headers.get(_PROGRESS)
        if asked is None or asked.strip().lower() not in _ON:
            return None
        supported = ctx.fmt.comment_frame(b"") is not None
        if ctx.reply_headers is None:
            ctx.reply_headers = {}
        ctx.reply_headers[PROGRESS_HEADER] = "enabled" if supported else "unsupported"
        return ProgressRun(self) if supported else None


class ProgressRun(StageRun):
    """One stream with progress frames."""

    wraps = True

    def __init__(self, stage: ProgressStage) -> None:
        self.stage = stage

    def stream(self, ctx: RequestContext, reply: Reply) -> None:
        assert reply.frames is not None
        stage = self.stage
        reply.frames = with_progress(reply.frames, ctx, stage.settings().progress_interval,
                                     stage.clock)


async def with_progress(
    frames: AsyncIterator[bytes], ctx: RequestContext, interval: float,
    clock: Callable[[], float],
) -> AsyncIterator[bytes]:
    """``frames``, with a progress frame every ``interval`` seconds and a last one."""
    fmt = ctx.fmt
    pattern = fmt.content_pattern
    counted = {"deltas": 0, "bytes": 0}
    source = frames.__aiter__()
    next_chunk: asyncio.Future[bytes] | None = None
    due = clock() + interval
    try:
        while True:
            if next_chunk is None:
                next_chunk = asyncio.ensure_future(source.__anext__())
            done, _ = await asyncio.wait({next_chunk}, timeout=max(0.0, due - clock()))
            if done:
                try:
                    chunk = next_chunk.result()
                except StopAsyncIteration:
                    next_chunk = None
                    break
                next_chunk = None
                counted["bytes"] += len(chunk)
                if pattern is not None:
                    counted["deltas"] += len(pattern.findall(chunk))
                yield chunk
            if clock() >= due:
                yield _frame(fmt, ctx, counted, clock, pattern is not None, done=False)
                due = clock() + interval
        yield _frame(fmt, ctx, counted, clock, pattern is not None, done=True)
    finally:
        if next_chunk is not None and not next_chunk.done():
            next_chunk.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await next_chunk
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            with suppress(Exception):
                await aclose()


def _frame(fmt: Format, ctx: RequestContext, counted: dict[str, int],
           clock: Callable[[], float], by_deltas: bool, *, done: bool) -> bytes:
    tokens: Any = ctx.record.completion_tokens
    if tokens is None:
        tokens = counted["deltas"] if by_deltas else counted["bytes"] // 4
    payload = orjson.dumps({"tokens": tokens, "bytes": counted["bytes"],
                            "elapsed_ms": round((clock() - ctx.started) * 1000), "done": done})
    frame = fmt.comment_frame(b"progress " + payload)
    assert frame is not None  # the stage runs only for formats that have one
    return frame
