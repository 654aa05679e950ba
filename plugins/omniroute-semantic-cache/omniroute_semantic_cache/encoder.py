"""The embedder in a process of its own, so that encoding never takes the gateway's GIL.

Encoding a prompt with torch runs a few hundred Python-level module calls between
its kernels, each holding the GIL: in a thread of the gateway's process they made
the event loop wait for it (a 1 ms ticker's p99 lag reached 7.7 ms). Here the
model lives in one dedicated child process and the layer's worker thread only
waits on a socket (GIL released)::

    embedder = ProcessEmbedder(MiniLMEmbedder())   # nothing started yet
    embedder.load()          # spawns the child, which loads the model (bounded wait)
    embedder.encode_within("What is the capital of France?", 256)  # one round trip
    embedder.stop()          # its socket shut: it exits (else terminated, then killed)

It is an :class:`~.embedders.Embedder` itself (``name``, ``dim``, ``max_tokens``,
``load``, ``encode``, ``count_tokens``), called from the layer's one worker
thread only, one request at a time: the worker's bounded queue is the queue.

* **Bounded.** Every answer is awaited at most ``call_timeout`` seconds (the
  model's load at most ``load_timeout``); past it the child is killed (hung, or
  far too slow) and :class:`EncoderError` raised: the layer counts a miss.
* **Restarted.** A child that died (killed, out of memory) is noticed on the next
  request, which raises :class:`EncoderError`; a later request starts a new
  child, at most once per ``restart_every`` seconds, so a model that cannot run
  does not spin.
* **No leak.** The child exits when its socket reaches end of file (the gateway
  stopped or died, however it died), and a watchdog thread ends it when its
  parent process is gone even in the middle of a long job. It ignores SIGINT
  (Ctrl-C in a terminal reaches the whole process group): the gateway stops it.
* **One thread.** The child sets ``OMP_NUM_THREADS=1`` (and MKL's, OpenBLAS's)
  before anything imports torch; the MiniLM embedder also calls
  ``torch.set_num_threads(1)``.
* **Second in line.** The child runs at niceness +5 (:data:`NICE`): when every core
  is busy, the gateway's event loop is scheduled before the encoder.

The child is ``python -m omniroute_semantic_cache.child <fd>`` (not
multiprocessing: nothing of the gateway's ``__main__`` is imported again), with
the parent's ``sys.path``; the embedder object is sent to it pickled, before it
loaded anything, over a socket pair only the two processes hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported in the child only (the plugin imports this module)
    from multiprocessing.connection import Connection

    from omniroute_semantic_cache.embedders import Embedder, Vectors

log = logging.getLogger(__name__)

#: the child's niceness, above the gateway's (see :class:`ProcessEmbedder`)
NICE = 5
#: environment of the child: one thread for every numeric library
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}


class EncoderError(RuntimeError):
    """The encoder process failed, died, or did not answer in time."""


class ProcessEmbedder:
    """An :class:`~.embedders.Embedder` whose work happens in a child process.

    :param embedder: the real embedder, not loaded yet (it is pickled to the child).
    :param call_timeout: seconds an encode may take before the child is killed.
    :param load_timeout: seconds the child may take to start and load the model.
    :param restart_every: least seconds between two starts of the child.
    :param nice: added to the child's scheduling niceness: when the cores are all
        busy, the gateway's event loop runs before the encoder.
    """

    def __init__(self, embedder: Embedder, *, call_timeout: float = 30.0,
                 load_timeout: float = 600.0, restart_every: float = 5.0,
                 nice: int = NICE) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.max_tokens = embedder.max_tokens
        self.call_timeout = call_timeout
        self.load_timeout = load_timeout
        self.restart_every = restart_every
        self.nice = nice
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None  # the parent's end, shut down to stop
        self._lock = threading.Lock()  # start / stop from two threads (worker, loop)
        self._started_at = -float("inf")
        self._stopped = False
        self._loading = False  # the model was sent to the child; its answer not read yet
        #: children started (1 + restarts), and how the previous ones ended
        self.starts = 0
        self.failures = 0

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ------------------------------------------------------------------ life cycle

    def begin_load(self) -> None:
        """Start the child and send it the model to load, without waiting: :meth:`load`
        then waits for it (the layer rebuilds its indexes meanwhile)."""
        with self._lock:
            if self._stopped:
                raise EncoderError("the encoder was stopped")
            if self._conn is not None and self._proc is not None and self._proc.poll() is None:
                return
            self._discard()
            self._started_at = time.monotonic()
            self.starts += 1
            parent, child = socket.socketpair()
            env = {**os.environ, **_ONE_THREAD,
                   "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "omniroute_semantic_cache.child",
                     str(child.fileno()), str(self.nice)],
                    pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
            finally:
                child.close()
            # imported here, not with the module: multiprocessing costs every gateway
            # with this plugin installed about 0.4 MiB of RSS, and only a started
            # encoder needs it (the setting is off by default)
            from multiprocessing.connection import Connection

            self._sock, self._conn = parent, Connection(os.dup(parent.fileno()))
            try:
                self._conn.send(("load", pickle.dumps(self.inner)))
            except OSError as exc:
                self._discard()
                raise EncoderError(f"the encoder process did not start: {exc!r}") from None
            self._loading = True

    def load(self) -> None:
        """Start the child (unless :meth:`begin_load` did) and wait until its model is
        loaded (at most ``load_timeout``)."""
        self.begin_load()
        if not self._loading:
            return
        try:
            ready = self._ask(None, self.load_timeout)
        except EncoderError:
            self._kill()  # a child without its model is no use
            raise
        finally:
            self._loading = False
        self.max_tokens = int(ready["max_tokens"])
        log.info("semantic cache encoder process %s ready (%s)", self.pid, self.name)

    def stop(self, timeout: float = 5.0) -> None:
        """End the child: its socket shut down (it exits at end of file, and a call
        waiting on it wakes up), then terminate, then kill, each bounded by ``timeout``.
        Safe from any thread, and more than once; the embedder does not start again."""
        self._stopped = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._end(self._proc, timeout, patient=True)
            self._discard()

    # ------------------------------------------------------------------ the Embedder

    def encode(self, texts: list[str]) -> Vectors:
        vecs: Vectors = self._call(("encode", texts))
        return vecs

    def count_tokens(self, text: str) -> int:
        return int(self._call(("count", text)))

    def encode_within(self, text: str, limit: int) -> Vectors | None:
        """``text``'s vector, or None when it is over ``limit`` tokens: one round trip."""
        vec: Vectors | None = self._call(("within", (text, limit)))
        return vec

    # ------------------------------------------------------------------ the wire

    def _call(self, request: tuple[str, Any]) -> Any:
        if self._conn is None or self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:  # it died since the last call
                self.failures += 1
                code = self._proc.poll()
                self._discard()
                raise EncoderError(f"the encoder process exited ({code})")
            if time.monotonic() - self._started_at < self.restart_every:
                raise EncoderError("the encoder process is restarting")
            self.load()
        return self._ask(request, self.call_timeout)

    def _ask(self, request: tuple[str, Any] | None, timeout: float) -> Any:
        """Send ``request`` (None: it was sent already) and wait for its answer."""
        conn = self._conn
        if conn is None:
            raise EncoderError("the encoder process is not running")
        try:
            if request is not None:
                conn.send(request)
            if not conn.poll(timeout):
                self.failures += 1
                log.warning("the semantic cache encoder did not answer within %.0f s: "
                            "killed", timeout)
                self._kill()
                raise EncoderError(f"no answer within {timeout:g} s")
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            self.failures += 1
            self._kill()
            raise EncoderError(f"the encoder process is gone: {exc!r}") from None
        if status != "ok":
            raise EncoderError(str(value))
        return value

    def _kill(self) -> None:
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._sock is not None:
            self._sock.close()
        self._conn, self._sock = None, None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._end(proc, 1.0)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, timeout: float, *,
             patient: bool = False) -> None:
        """Make ``proc`` exit and reap it (no zombie): waited for first when ``patient``
        (its socket was shut down: it is exiting), then terminated, then killed."""
        if proc is None:
            return
        steps = (None, proc.terminate, proc.kill) if patient else (proc.terminate, proc.kill)
        for step in steps:
            if step is not None:
                with contextlib.suppress(ProcessLookupError):
                    step()
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue


# ---------------------------------------------------------------------- the child


def _watch_parent(parent: int) -> None:
    """End this process once its parent is gone (even in the middle of a job)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def serve(fd: int, nice: int = 0) -> None:
    """The child's loop: requests from the socket ``fd`` answered until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="parent-watch").start()
    from multiprocessing.connection import Connection

    import numpy as np

    conn = Connection(fd)
    embedder: Any = None
    while True:
        try:
            kind, arg = conn.recv()
        except (EOFError, OSError):
            return  # the gateway closed the socket, or died
        if kind == "stop":
            return
        try:
            if kind == "load":
                embedder = pickle.loads(arg)
                embedder.load()
                value: Any = {"max_tokens": embedder.max_tokens}
            elif kind == "encode":
                value = np.ascontiguousarray(embedder.encode(arg), np.float32)
            elif kind == "count":
                value = embedder.count_tokens(arg)
            elif kind == "within":
                text, limit = arg
                value = (None if embedder.count_tokens(text) > limit
                         else np.ascontiguousarray(embedder.encode([text])[0], np.float32))
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # noqa: BLE001 - sent to the gateway, which logs it
            reply: tuple[str, Any] = ("error", f"{type(exc).__name__}: {exc}")
        else:
            reply = ("ok", value)
        try:
            conn.send(reply)
        except OSError:
            return
