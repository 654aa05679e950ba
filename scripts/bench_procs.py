"""The benchmarks' processes: started, watched through ``/proc``, stopped.

The fake servers (:func:`start_app`, from ``bench_fakes.py``) and the real gateway
(:func:`start_gateway`: ``python -m omniroute.cli serve``, configured with its CLI)
each run in a process of their own; CPU and memory are read from ``/proc`` for a
process and its children (:func:`process_tree`, :func:`cpu_ms`, :func:`rss_mib`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bench_fakes import HOST, serve_app
from bench_usage import prefill

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc

def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on


def cpu_ms(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return ticks * 1000 / CLK_TCK


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat_fields(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def busy_ms() -> float:
    """CPU time used by the whole machine so far (user + nice + system)."""
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) * 1000 / CLK_TCK


def rss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib += sum(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
    return kib / 1024


# ------------------------------------------------------------------ starting

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_app(ctx: Any, factory: str, arg: str | None, loop: str, procs: list[Any]
              ) -> tuple[Any, int]:
    ports = ctx.Queue()
    procs.append(ctx.Process(target=serve_app, args=(factory, arg, loop, ports), daemon=True))
    procs[-1].start()
    return procs[-1], ports.get(timeout=30)


def gateway_env(password: str, settings: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without its ``OMNIROUTE_*`` variables, with the admin password
    and ``settings`` pinned (``request_log`` -> ``OMNIROUTE_REQUEST_LOG``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["INITIAL_PASSWORD"] = password
    env.update({f"OMNIROUTE_{name.upper()}": value for name, value in (settings or {}).items()})
    return env


def omniroute(cli: list[str], env: dict[str, str], *args: str, cwd: str | None = None) -> None:
    """One ``omniroute`` command (``cli`` + ``args``) run to its end.

    :raises RuntimeError: it failed (with its output).
    """
    done = subprocess.run([*cli, *args], check=False, env=env, capture_output=True, text=True,
                          cwd=cwd)
    if done.returncode:
        raise RuntimeError(f"`omniroute {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")


def serve_gateway(cli: list[str], env: dict[str, str], log_path: Path, *options: str,
                  workers: int = 1, cwd: str | None = None, wait: float = 30.0,
                  ) -> tuple[subprocess.Popen, int]:
    """``omniroute serve`` (``cli`` + ``options``) on a free port, its output in
    ``log_path``, once its health check answers (with ``workers``: once they have
    started too), within ``wait`` seconds."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--port", str(port), *options],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd)  # cwd comes first on sys.path
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:  # not in the run's list yet: nothing else would stop it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"the gateway did not start:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api/monitoring/health",
                                        timeout=1) as resp:
                # with workers: the parent, N workers (and a resource tracker)
                if resp.status == 200 and (workers == 1 or len(process_tree(proc.pid)) > workers):
                    break
        except OSError:
            pass
        time.sleep(0.1)
    if workers > 1:
        time.sleep(1.0)  # let every worker finish starting
    return proc, port


def start_gateway(data_dir: Path, upstream_port: int, workers: int, loop: str | None,
                  source: str | None = None, *, settings: dict[str, str] | None = None,
                  rows: int = 0) -> tuple[subprocess.Popen, int]:
    """The gateway, configured with its CLI; ``source``: run that source tree's omniroute
    (first on PYTHONPATH) instead of the installed one, on its default loop (``loop`` None).

    :param settings: runtime settings pinned through the environment (``request_log``).
    :param rows: records put in its request log before it starts.
    """
    data_dir.mkdir()
    env = gateway_env("bench-password", settings)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", str(data_dir)]
    omniroute(cli, env, "providers", "add", "--type", "openai", "--name", "bench",
              "--prefix", "bench", "--base-url", f"http://{HOST}:{upstream_port}/v1",
              "--api-key", "sk-bench", cwd=source)
    if rows:
        took = prefill(data_dir / "omniroute.sqlite3", rows)
        print(f"  {rows:,} records put in the request log in {took:.1f} s", file=sys.stderr)
    return serve_gateway(cli, env, data_dir / "gateway.log", "--log-level", "warning",
                         "--workers", str(workers), *(["--loop", loop] if loop else []),
                         workers=workers, cwd=source)


# ------------------------------------------------------------------ a run, and stopping it

@dataclass
class Run:
    """What one run starts, stopped together at its end (:func:`running`)."""

    ctx: Any  #: the ``spawn`` multiprocessing context
    tmp: Path  #: a scratch directory, removed at the end
    procs: list[Any] = field(default_factory=list)  #: its multiprocessing processes
    gateways: list[subprocess.Popen] = field(default_factory=list)


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Exit with what ``main`` returns: a script's last line (130 on Ctrl-C)."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


@contextlib.contextmanager
def running(prefix: str) -> Iterator[Run]:
    """A run (its scratch directory named from ``prefix``); on the way out, by an
    exception or SIGTERM too, every process it started is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        run = Run(multiprocessing.get_context("spawn"), Path(tmp))
        try:
            yield run
        finally:
            stop_all(run.gateways, run.procs)


def stop_all(gateways: list[subprocess.Popen], procs: list[Any], *, grace: float = 10
             ) -> None:
    """Stop the gateways (each with its workers: SIGTERM, SIGKILL after ``grace``
    seconds) and the processes ``procs``."""
    for gateway in gateways:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGTERM)  # the gateway and its workers
    for gateway in gateways:
        try:
            gateway.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait()
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
