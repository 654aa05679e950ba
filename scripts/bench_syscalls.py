#!/usr/bin/env python
"""Kernel-side counts per request, gateway against the bare forwarder, at full speed.

Callgrind (``bench_instructions.py``) counts the instructions a server runs in user
space; the kernel's share (system calls, TCP, wake-ups of other threads) is invisible
to it, and so are cache misses. This starts, on 127.0.0.1, nginx as the upstream
(``bench_nginx.py``), the bare forwarder of ``bench_fakes.py`` and the gateway (each on
the ``--loop``), and for every lane and concurrency drives each in turn with wrk
(``bench_wrk.py``: a warm-up run, then the measured one) while ``perf stat``
(tracepoints and software counters: they work where a VM has no hardware counters)
counts, per thread of the server:

* system calls by kind (``syscalls:sys_enter_<name>``, and every one by
  ``raw_syscalls:sys_enter``: what no named kind took is ``other``);
* context switches (a thread that sleeps in ``epoll_wait`` or ``futex`` and is woken);

and ``/proc/<pid>/task/<tid>/stat`` and ``schedstat`` give user and system time and
run time per thread; ``--gc`` adds the cyclic collector's collections by generation and
their thread CPU time (``gc.callbacks``, through a ``sitecustomize`` the servers import).
Everything is divided by the requests wrk completed. Counts of
one kind per request do not depend on how loaded the machine is, except where
batching does (one ``epoll_wait`` serves every connection ready at once: fewer per
request when the server is behind); compare the two servers in one run.

    .venv/bin/python scripts/bench_syscalls.py                     # json + instant, c=1,64
    .venv/bin/python scripts/bench_syscalls.py --lanes json --concurrency 1,16,64 --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_fakes import DONE, HOST, INSTANT_REQUEST, REQUEST
from bench_nginx import SSE_ACCEPT, start_nginx
from bench_procs import (
    exit_with,
    free_port,
    process_tree,
    running,
    start_app,
    start_gateway,
)
from bench_wrk import SETTLE, check_answer, run_wrk, script

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the system calls counted by name (the rest is ``other``)
SYSCALLS = ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "getsockname", "getpeername",
            "setsockopt", "getsockopt", "accept4", "connect", "socket", "close", "ioctl",
            "fcntl", "mmap", "munmap", "mremap", "brk", "madvise", "mprotect", "eventfd2",
            "pread64", "pwrite64", "lseek", "fdatasync", "fsync", "openat", "newfstatat",
            "getpid", "rt_sigprocmask", "clock_gettime", "gettimeofday", "sched_yield")
#: wake-ups: of other tasks by the server's threads (``sched_waking``, counted in the
#: waker's context), inter-processor interrupts it sent, and reschedule interrupts taken
WAKE_EVENTS = ("sched:sched_waking", "ipi:ipi_send_cpu", "irq_vectors:reschedule_entry")
LANES = {"json": (REQUEST, None, {}),
         "instant": (INSTANT_REQUEST, DONE.decode(), {"Accept": SSE_ACCEPT})}


def threads(pid: int) -> dict[int, str]:
    """The threads of ``pid``: tid -> a name (``main``: the event loop's; the others by
    their name and their order of start, ``python#1`` the first other Python thread)."""
    out, seen = {}, {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        if tid == pid:
            out[tid] = "main"
        else:
            seen[comm] = seen.get(comm, 0) + 1
            out[tid] = f"{comm}#{seen[comm]}"
    return out


def times(pid: int) -> dict[int, tuple[float, ...]]:
    """Per thread: user ms, system ms (ticks), run ms (schedstat, ns precision), and
    voluntary and involuntary context switches (``status``)."""
    out = {}
    for tid in threads(pid):
        task = f"/proc/{pid}/task/{tid}"
        try:
            fields = Path(f"{task}/stat").read_text().rsplit(")", 1)[1].split()
            run_ns = int(Path(f"{task}/schedstat").read_text().split()[0])
            status = dict(line.split(":\t", 1) for line in
                          Path(f"{task}/status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        out[tid] = (int(fields[11]) * 1000 / CLK_TCK, int(fields[12]) * 1000 / CLK_TCK,
                    run_ns / 1e6, int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]))
    return out


#: ``--gc``: imported by the servers (``PYTHONPATH``); SIGUSR2 writes the collections so far
GC_SITE = """import gc, json, os, signal, threading, time
_main, _stats, _start = threading.main_thread().ident, {}, {}
def _cb(phase, info, _now=time.thread_time_ns, _tid=threading.get_ident):
    tid = _tid()
    if phase == "start":
        _start[tid] = _now()
        return
    s = _stats.setdefault(f"{'main' if tid == _main else 'other'}/gen{info['generation']}", [0, 0])
    s[0] += 1
    s[1] += _now() - _start.get(tid, 0)
gc.callbacks.append(_cb)
def _dump(*_):
    path = os.path.join(os.environ["BENCH_GC_DIR"], f"gc-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(_stats, f)
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR2, _dump)
"""


def gc_counts(pid: int, where: Path) -> dict[str, list[int]]:
    """``--gc``: the collections of ``pid`` so far, by thread and generation: [count, ns]."""
    path = where / f"gc-{pid}.json"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    for _ in range(200):
        time.sleep(0.01)
        if path.exists():
            return json.loads(path.read_text())
    return {}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of its children on ``cpus``."""
    for proc in process_tree(pid):
        for tid in os.listdir(f"/proc/{proc}/task"):
            with contextlib.suppress(OSError):  # (a thread that has ended)
                os.sched_setaffinity(int(tid), cpus)


TRACING = Path("/sys/kernel/tracing")


def trace_events() -> str:
    """The kernel's tracepoints (tracefs' ``available_events``). A new machine may not
    have tracefs mounted: mounted here (as root), else the run stops with one line."""
    events = TRACING / "available_events"
    if not events.exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    try:
        return events.read_text()
    except OSError as exc:
        sys.exit(f"bench_syscalls: the kernel's tracepoints are not readable ({exc}); "
                 f"mount tracefs (`mount -t tracefs nodev {TRACING}`, as root) and run again")


def perf_stat(pid: int, out: Path) -> subprocess.Popen:
    """``perf stat`` counting the system calls and switches of every thread of ``pid``
    until SIGINT, as CSV in ``out``."""
    available = set(trace_events().split())
    events = ["raw_syscalls:sys_enter", "context-switches", "page-faults",
              *(e for e in WAKE_EVENTS if e in available),
              *(f"syscalls:sys_enter_{name}" for name in SYSCALLS
                if f"syscalls:sys_enter_{name}" in available)]
    proc = subprocess.Popen(["perf", "stat", "-x", ";", "--per-thread", "-o", str(out),
                             "-e", ",".join(events), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    return proc


def read_perf(out: Path, names: dict[int, str]) -> dict[tuple[str, str], int]:
    """(thread name, event) -> count, threads of one name summed."""
    counts: dict[tuple[str, str], int] = {}
    for line in out.read_text().splitlines():
        parts = line.split(";")
        if len(parts) < 4 or line.startswith("#"):
            continue
        thread, value, event = parts[0], parts[1], parts[3]
        try:
            count = int(float(value))
        except ValueError:
            continue
        tid = int(thread.rsplit("-", 1)[1])
        name = names.get(tid, thread.rsplit("-", 1)[0])
        event = event.replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter",
                                                                 "all").split(":")[-1]
        counts[name, event] = counts.get((name, event), 0) + count
    return counts


def cell(tmp: Path, name: str, pid: int, url: str, lane: str, conc: int,
         args: argparse.Namespace) -> dict[str, Any]:
    """One measured wrk run of ``lane`` at ``conc`` against ``pid``: per request counts."""
    body, tail, headers = LANES[lane]
    check_answer(url, body, headers, tail)
    lua = tmp / "cell.lua"
    lua.write_text(script(body, headers))
    run_wrk(lua, url, conc, args.warmup)
    time.sleep(SETTLE)
    names = threads(pid)
    out = tmp / f"{name}-{lane}-c{conc}.perf"
    perf = perf_stat(pid, out)
    record = None
    if args.record:  # a profile of the same run, by CPU-clock samples (kernel included)
        record = subprocess.Popen(["perf", "record", "-q", "-F", "4999", "-e", "cpu-clock",
                                   "-g", "-p", str(pid), "-o",
                                   str(Path(args.record) / f"{name}-{lane}-c{conc}.data")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    gc_before = gc_counts(pid, tmp) if args.gc else {}
    before = times(pid)
    summary, _ = run_wrk(lua, url, conc, args.duration)
    after = times(pid)
    gc_after = gc_counts(pid, tmp) if args.gc else {}
    for proc in (perf, record):
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    n = summary["requests"]
    counts = read_perf(out, names)
    per_thread: dict[str, list[float]] = {}
    for tid, now in after.items():
        then = before.get(tid, (0.0,) * len(now))
        row = per_thread.setdefault(names.get(tid, str(tid)), [0.0] * len(now))
        for i, (a, b) in enumerate(zip(now, then, strict=True)):
            row[i] += a - b
    for key, (count, ns) in gc_after.items():  # per 1,000 requests, and ms a request
        then = gc_before.get(key, [0, 0])
        counts[key.split("/")[0], f"gc {key.split('/')[1]} x1000"] = (count - then[0]) * 1000
        counts[key.split("/")[0], f"gc {key.split('/')[1]} ms"] = (ns - then[1]) / 1e6
    return {"requests": n, "rps": n / (summary["duration_us"] / 1e6),
            "counts": {f"{t}/{e}": c / n for (t, e), c in counts.items()},
            "ms": {t: [v / n for v in row] for t, row in per_thread.items()}}


def report(results: dict[str, dict[str, Any]], top: int) -> None:
    """Per cell: syscalls by kind per request (every thread, and the busiest by thread),
    user/system/run ms per request, beside each other for the targets."""
    cells = sorted({c for r in results.values() for c in r}, key=lambda c: (c.split()[0],
                                                                            int(c.split("=")[1])))
    targets = list(results)
    for cellname in cells:
        rows = {t: results[t].get(cellname) for t in targets}
        print(f"\n### {cellname}: " + ", ".join(
            f"{t} {r['requests']:,} requests ({r['rps']:,.0f}/s)" for t, r in rows.items() if r))
        print("\n| per request | " + " | ".join(targets) + " |")
        print("|---|" + "---:|" * len(targets))
        for key, label in ((0, "user ms"), (1, "system ms"), (2, "run ms (schedstat)")):
            values = [sum(v[key] for v in r["ms"].values()) if r else math.nan
                      for r in rows.values()]
            print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
        threads_seen = sorted({t for r in rows.values() if r for t in r["ms"]})
        for thread in threads_seen:
            values = [r["ms"].get(thread, [0] * 5) if r else [math.nan] * 5
                      for r in rows.values()]
            if max(v[2] for v in values) < 0.0005:
                continue
            print(f"| thread {thread}: user/sys/run ms | " + " | ".join(
                f"{v[0]:.4f} / {v[1]:.4f} / {v[2]:.4f}" for v in values) + " |")
            print(f"| thread {thread}: voluntary/involuntary switches | " + " | ".join(
                f"{v[3]:.3f} / {v[4]:.3f}" for v in values) + " |")
        keys: dict[str, float] = {}
        for r in rows.values():
            if r:
                for k, v in r["counts"].items():
                    keys[k] = max(keys.get(k, 0.0), v)
        totals: dict[str, list[float]] = {}
        for t, r in rows.items():
            for k, v in (r or {"counts": {}})["counts"].items():
                event = k.rsplit("/", 1)[1]
                totals.setdefault(event, [0.0] * len(targets))[targets.index(t)] += v
        for event, values in sorted(totals.items(), key=lambda kv: -max(kv[1])):
            if max(values) >= 0.005:
                print(f"| {event} (all threads) | " + " | ".join(f"{v:.3f}" for v in values)
                      + " |")
        for k, _ in sorted(keys.items(), key=lambda kv: -kv[1])[:top]:
            if keys[k] >= 0.005:
                print(f"| {k} | " + " | ".join(
                    f"{(r or {'counts': {}})['counts'].get(k, 0.0):.3f}" for r in rows.values())
                    + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lanes", default="json,instant", help="of json,instant (both)")
    p.add_argument("--concurrency", default="1,64", help="levels (1,64)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds a cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before (1)")
    p.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    p.add_argument("--targets", default="forwarder,omniroute",
                   help="of forwarder,omniroute,norecords (the gateway, records off)")
    p.add_argument("--record", metavar="DIR",
                   help="also `perf record` each measured run (cpu-clock, call graphs) "
                        "into DIR/<target>-<lane>-c<N>.data, for `perf report`")
    p.add_argument("--pin", choices=["split", "one", "writer-same", "writer-split"],
                   help="split: the server on CPU 0, wrk and nginx on CPU 1; one: all on "
                        "CPU 0 (the scheduler's placement out of the counts); writer-same, "
                        "writer-split: the server's event loop thread on CPU 0 and its "
                        "other threads (the request log's writer) on CPU 0 too or on CPU 1, "
                        "wrk and nginx where the scheduler puts them")
    p.add_argument("--gc", action="store_true",
                   help="count the servers' garbage collections (gc.callbacks): per 1,000 "
                        "requests and their CPU ms a request, by thread and generation")
    p.add_argument("--top", type=int, default=30, help="thread/event rows a cell (30)")
    args = p.parse_args()
    with running("omniroute-sys-") as run:
        if args.gc:  # the servers import it (their environment is this one's)
            (run.tmp / "site").mkdir()
            (run.tmp / "site" / "sitecustomize.py").write_text(GC_SITE)
            os.environ["BENCH_GC_DIR"] = str(run.tmp)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(run.tmp / "site"), os.environ.get("PYTHONPATH")]))
        nginx_port = free_port()
        nginx = start_nginx(run.tmp / "nginx", nginx_port)
        try:
            servers: dict[str, int] = {}
            pids: dict[str, int] = {}
            for target in args.targets.split(","):
                if target == "forwarder":
                    proc, port = start_app(run.ctx, "forwarder", f"http://{HOST}:{nginx_port}",
                                           args.loop, run.procs)
                    pids[target] = proc.pid
                else:  # norecords: the gateway with its usage records off
                    gw, port = start_gateway(
                        run.tmp / target, nginx_port, 1, args.loop,
                        settings={"request_log": "false"} if target == "norecords" else None)
                    run.gateways.append(gw)
                    pids[target] = gw.pid
                servers[target] = port
            if args.pin and args.pin.startswith("writer-"):
                for pid in pids.values():  # the loop's thread on 0, the others on 0 or 1
                    for tid, name in threads(pid).items():
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(tid, {0} if name == "main" or
                                                 args.pin == "writer-same" else {1})
            elif args.pin:  # the server on CPU 0; wrk (this process's child) and nginx on 1
                other = {0} if args.pin == "one" else {1}
                for pid in pids.values():
                    pin(pid, {0})
                pin(nginx.pid, other)
                os.sched_setaffinity(0, other)
            results: dict[str, dict[str, Any]] = {t: {} for t in servers}
            for lane in args.lanes.split(","):
                for conc in (int(c) for c in args.concurrency.split(",")):
                    for target, port in servers.items():
                        url = f"http://{HOST}:{port}/v1/chat/completions"
                        results[target][f"{lane} c={conc}"] = cell(
                            run.tmp, target, pids[target], url, lane, conc, args)
                        print(f"  {target} {lane} c={conc} done", file=sys.stderr, flush=True)
        finally:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(10)
    report(results, args.top)
    return 0


if __name__ == "__main__":
    exit_with(main)
