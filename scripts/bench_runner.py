"""The part of ``bench_instructions.py`` that runs inside each server under test
(``bench_instructions.py --run``): it slows the background loops, and switches the
counting (callgrind, cProfile or the bytecode counter) on and off on signals.
See ``bench_instructions.py``'s docstring."""

from __future__ import annotations

import asyncio
import cProfile
import json
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

#: how much longer the servers' background loops sleep (see bench_instructions.py)
SLEEP_SLOWDOWN = 1000.0


class OpcodeCounter:
    """Bytecodes executed per function (``--opcodes``), with cProfile's switches."""

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            self.counts[code] = self.counts.get(code, 0) + 1
        elif event == "call":  # (a coroutine's every resumption is a call)
            frame.f_trace_opcodes = True
        return self._trace

    def enable(self) -> None:
        sys.settrace(self._trace)

    def disable(self) -> None:
        sys.settrace(None)

    def dump_stats(self, path: str) -> None:
        Path(path).write_text(json.dumps([[c.co_filename, c.co_firstlineno, c.co_name, n]
                                          for c, n in self.counts.items()]))


def first_byte_window(on: Any, off: Any) -> None:
    """Call ``on()`` when the server receives a request's first bytes and ``off()`` when
    that request's first body write returns (``--first-byte``)."""
    from aiohttp import web, web_protocol

    state = {"open": False}
    received = web_protocol.RequestHandler.data_received
    write = web.StreamResponse.write

    def data_received(self: Any, data: bytes) -> None:
        if not state["open"]:
            state["open"] = True
            on()
        received(self, data)

    async def first_write(self: Any, data: Any) -> None:
        await write(self, data)
        if state["open"]:
            state["open"] = False
            off()

    web_protocol.RequestHandler.data_received = data_received  # type: ignore[method-assign]
    web.StreamResponse.write = first_write  # type: ignore[method-assign]


def run_server(argv: list[str], flushed: Path, profile_to: str | None,
               opcodes: bool = False, toggle_lib: str | None = None) -> None:
    """Run ``argv`` (``-m module ...`` or ``script ...``) with long sleeps made longer
    still; SIGUSR1 writes the request log now and then touches ``flushed``;
    with ``profile_to``, SIGUSR2 switches cProfile (with ``opcodes``, the
    :class:`OpcodeCounter`) on, and again off and dumps it. With ``toggle_lib``
    (``--first-byte``) only the first-byte windows count: callgrind's collection (the
    helper's toggle), or the profiler while SIGUSR2 has it on."""
    import omniroute.storage.requestlog as requestlog

    sleep = asyncio.sleep

    async def slow_sleep(delay: float, result: Any = None) -> Any:
        # background loops (flushes, polls, syncs) sleep 0.5 s and more; nothing on a
        # request's path sleeps that long
        return await sleep(delay * SLEEP_SLOWDOWN if delay >= 0.1 else delay, result)

    asyncio.sleep = slow_sleep  # type: ignore[assignment]
    timeout = asyncio.timeout

    def slow_timeout(delay: float | None) -> Any:
        return timeout(delay * SLEEP_SLOWDOWN if delay is not None and delay >= 0.1
                       else delay)

    asyncio.timeout = slow_timeout  # type: ignore[assignment]
    logs: list[Any] = []
    original = requestlog.RequestLog.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        logs.append((self, asyncio.get_running_loop()))

    requestlog.RequestLog.__init__ = init  # type: ignore[method-assign]

    async def flush() -> None:
        for log, _ in logs:
            await log.flush()
        flushed.touch()

    def on_flush(*_: Any) -> None:
        if not logs:
            flushed.touch()
            return
        loop = logs[0][1]
        loop.call_soon_threadsafe(lambda: loop.create_task(flush()))

    signal.signal(signal.SIGUSR1, on_flush)
    if profile_to:
        # a fresh profiler per cell: each cell's dump holds that cell only
        state: dict[str, Any] = {"on": False, "profiler": None}

        def toggle(*_: Any) -> None:
            if state["on"]:
                if not toggle_lib:
                    state["profiler"].disable()
                state["profiler"].dump_stats(profile_to)
            else:
                state["profiler"] = OpcodeCounter() if opcodes else cProfile.Profile()
                if not toggle_lib:
                    state["profiler"].enable()
            state["on"] = not state["on"]

        signal.signal(signal.SIGUSR2, toggle)
        if toggle_lib:
            def window_on() -> None:
                if state["on"]:
                    state["profiler"].enable()

            def window_off() -> None:
                if state["profiler"] is not None:
                    state["profiler"].disable()

            first_byte_window(window_on, window_off)
    elif toggle_lib:
        import ctypes

        cg_toggle = ctypes.CDLL(toggle_lib).omniroute_cg_toggle
        first_byte_window(cg_toggle, cg_toggle)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
