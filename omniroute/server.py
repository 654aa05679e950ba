"""Running the gateway: one process, or N workers sharing a port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from omniroute.app import make_app
from omniroute.appkeys import CATALOG, PIPELINE
from omniroute.config import Config, ConfigError
from omniroute.plugins import load_plugins
from omniroute.pricing.table import has_table
from omniroute.startup import check_credentials, check_port, listen_error, open_store

log = logging.getLogger(__name__)

#: the exit status of a start-up input that cannot be used (as click's usage errors)
STARTUP_ERROR = 2
#: seconds the handlers still running after the shutdown grace get before they are cancelled
_AFTER_GRACE = 2.0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


async def prepare(config: Config) -> None:
    """Check the data directory, migrate the database and set the first admin password,
    once, before workers start.

    :raises ConfigError: a start-up input cannot be used (the message says which).
    """
    from omniroute.auth.admin import AdminSessionScheme, ensure_password

    store = await open_store(config)
    try:
        await check_credentials(store, config)
        plugins = load_plugins(blocked=config.disabled_plugins, allowed=config.allowed_plugins)
        if AdminSessionScheme.name in plugins.auth_schemes:
            await ensure_password(store, config.initial_password)
    finally:
        await store.db.close()


#: seconds the child process that writes the price table gets (it takes about 3)
_PRICE_TABLE_TIMEOUT = 120.0


def write_price_table(config: Config) -> None:
    """Write genai-prices' price table into the data directory, in a child process, when
    it is not there for the installed genai-prices (a first start, an upgrade).

    Building it imports genai-prices and pydantic (about 15 MiB that a process keeps
    for good); in a child, the gateway never does. Should the child fail, the gateway
    builds the table itself (:meth:`Gateway.start <omniroute.gateway.Gateway.start>`).
    """
    if has_table(config.data_dir):
        return
    command = [sys.executable, "-m", "omniroute.pricing", str(config.data_dir)]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=_PRICE_TABLE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("the price table's writer did not finish (%s); the gateway builds it", exc)
        return
    if done.returncode:
        log.warning("the price table's writer failed (exit status %s); the gateway builds "
                    "it: %s", done.returncode, done.stderr.decode(errors="replace").strip()[-500:])


def settle_malloc() -> None:
    """Raise glibc's mmap threshold once, as a long-running process's would be anyway.

    glibc serves blocks over its mmap threshold (128 KiB at start) with mmap and
    raises the threshold only after such a block is freed. asyncio reads sockets
    into 256 KiB buffers, so until that happens every read costs an mmap, mremap
    and munmap (measured: about 0.1 ms of CPU each). Freeing one 1 MiB block at
    start-up moves the threshold past those buffers for good. No effect elsewhere.
    """
    bytearray(1 << 20)  # allocated with mmap, freed at once


def trim_malloc() -> None:
    """Hand the free memory start-up left in glibc's heap back to the OS (about 1.5 MiB).

    A no-op without glibc (musl, macOS). Trimming again later was measured to give
    nothing back: what a busy worker grows by is live, not free.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop's for ``uvloop`` and ``auto``, else asyncio's (None).

    ``auto`` falls back to asyncio quietly when uvloop is not installed (it has no
    Windows build); an explicit ``uvloop`` says so in the log first.
    """
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            log.warning("uvloop is not installed: running on asyncio's event loop")
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    """``asyncio.run(coro)`` on the event loop named by ``loop`` (see :func:`loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(coro)


YOUNG_THRESHOLD = 2_000
"""Net allocations of tracked objects between young collections (see :func:`settle_gc`)."""


def settle_gc() -> None:
    """Move everything start-up made out of the cyclic garbage collector's sight.

    Plugins, formats, the SDK-free import graph and the app are alive for the whole
    run, yet every full collection walked them all again: a few hundred thousand
    objects, which made per-request allocations (a task, a response) trigger
    collections that cost more than the request itself (measured with py-spy: the
    time showed up in ``create_task``). ``gc.freeze()`` parks them in the permanent
    generation; objects made per request are collected as before.

    Then the young generation's threshold goes from 700 to :data:`YOUNG_THRESHOLD`.
    The count that triggers a young collection is allocations less deallocations, so
    it tracks the requests in flight: at 64 concurrent requests it passed 700 about
    once every 28 requests, and each collection walked the in-flight requests' live
    objects to find almost no garbage (5 % of the gateway's CPU in ``perf``; 637 young
    collections collected ~1,700 objects in ~18,000 requests). At 2,000: 77 young
    collections in that run, and callgrind counts 682k → 636k instructions a JSON
    request at c=64, 821k → 794k an instant stream, no change at c=1 or c=16.
    Higher thresholds collect less still (10,000: 632k) but hold more cyclic garbage
    between collections: resident memory after the benchmark's cells 60.1 to 60.3 MiB
    against 59.0 at 700 and 59.1 at 2,000 (``bench_rss.py``, two gateways each).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def run_worker(
    config: Config, *, reuse_port: bool = False, announce: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (or ``stop`` is set), then shut down cleanly.

    See :func:`shut_down`: no new connections, the requests in flight get the
    ``shutdown_grace`` setting's seconds, streams still open then end with their
    format's error event, and every usage record is written before the exit.
    """
    settle_malloc()
    app = make_app(config)
    # the grace is shut_down's; what is left after it (a JSON answer still waiting on
    # its upstream) is cancelled this soon, and recorded as cut by the shutdown
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=_AFTER_GRACE)
    await runner.setup()  # opens the database and the plugins' resources
    settle_gc()
    trim_malloc()
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None,
                           backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise listen_error(config, exc) from None
        log.info("omniroute listening on http://%s:%d", config.host, config.port)
        if announce:  # only once the socket is really listening
            print(f"omniroute serving on http://{config.host}:{config.port} "
                  f"(data in {config.data_dir}, {config.workers} worker(s))",
                  file=sys.stderr, flush=True)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await shut_down(runner, app)
    finally:
        await runner.cleanup()  # cancels what is left, then closes the gateway: the
        # request log's last flush


async def shut_down(runner: web.AppRunner, app: web.Application) -> None:
    """Stop accepting, then drain the pipeline (:meth:`Pipeline.drain
    <omniroute.pipeline.Pipeline.drain>`) within the ``shutdown_grace`` setting."""
    for site in list(runner.sites):
        await site.stop()  # the listening socket closes: new connections are refused
    if runner.server is not None:
        runner.server.pre_shutdown()  # keep-alive connections close after their request
    grace = app[CATALOG].settings.shutdown_grace
    log.info("shutting down: new connections refused, %.0fs for requests in flight", grace)
    await app[PIPELINE].drain(grace)


def _worker_main(config: Config, announce: bool, errors: Any) -> None:
    setup_logging(config.log_level)
    try:
        run(run_worker(config, reuse_port=True, announce=announce), config.loop)
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # the parent reports it, once for all workers
        errors.put(str(exc))
        sys.exit(STARTUP_ERROR)


def serve(config: Config) -> None:
    """Run the gateway in the foreground with ``config.workers`` processes.

    :raises ConfigError: a start-up input cannot be used (checked before any worker
        starts: data directory, key, database, password, port).
    """
    setup_logging(config.log_level)
    check_port(config)  # before prepare prints a generated password that a failure would lose
    asyncio.run(prepare(config))
    write_price_table(config)
    if config.workers == 1:
        with contextlib.suppress(KeyboardInterrupt):
            run(run_worker(config, announce=True), config.loop)
        return
    # prometheus-client's multiprocess mode: a fresh directory per run, named in the
    # environment before any worker imports prometheus_client (it reads it at import)
    metrics_dir = Path(tempfile.mkdtemp(prefix="omniroute-metrics-"))  # mode 0700
    previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        _serve_workers(config.replace(metrics_dir=metrics_dir))
    finally:
        if previous is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_workers(config: Config) -> None:
    import multiprocessing.connection  # here: a single worker never needs it

    from prometheus_client.multiprocess import mark_process_dead

    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    workers = [ctx.Process(target=_worker_main, args=(config, i == 0, errors),
                           name=f"omniroute-worker-{i}")
               for i in range(config.workers)]
    for w in workers:
        w.start()

    def forward(signum: int, _frame: object) -> None:
        for w in workers:
            if w.is_alive():
                w.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    running = list(workers)
    while running:
        ended = multiprocessing.connection.wait([w.sentinel for w in running])
        for w in [w for w in running if w.sentinel in ended]:
            w.join()
            running.remove(w)
            if w.pid is not None:  # its live gauges (streams in flight...) end with it
                mark_process_dead(w.pid, str(config.metrics_dir))
            if w.exitcode == STARTUP_ERROR:
                forward(signal.SIGTERM, None)  # no gateway with fewer workers than asked
    if not errors.empty():
        raise ConfigError(errors.get())
    failed = [w.name for w in workers if w.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise SystemExit(f"worker(s) exited with an error: {', '.join(failed)}")
