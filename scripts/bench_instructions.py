#!/usr/bin/env python
"""Instructions per request, gateway against the bare forwarder, under callgrind.

Wall-clock CPU on a shared machine is noisy; instruction counts are not. This
starts, on 127.0.0.1: the fake OpenAI upstream of ``bench_fakes.py`` (plain),
then each server under test in turn under ``valgrind --tool=callgrind`` with
instrumentation off: the bare forwarder of ``bench_fakes.py`` and the real
gateway (``omniroute serve``, configured with ``providers add``
as ``bench.py`` does). For every lane and concurrency it sends ``--warmup``
requests, switches instrumentation on (``callgrind_control -i on``), sends
``--requests`` more, has the request log write them, dumps the counters and
switches instrumentation off, so the count holds the steady state only: no
start-up, no warm-up, no shut-down. Every thread of the server counts
(aiosqlite's included).

    .venv/bin/python scripts/bench_instructions.py                      # json + instant, c=1,16
    .venv/bin/python scripts/bench_instructions.py --lanes json --concurrency 16
    .venv/bin/python scripts/bench_instructions.py --targets omniroute --keep /tmp/cg
    callgrind_annotate --inclusive=yes /tmp/cg/omniroute-json-c1.out | head -60
    .venv/bin/python scripts/bench_instructions.py --loop uvloop          # both on uvloop
    .venv/bin/python scripts/bench_instructions.py --cprofile --top 50   # Python functions
    .venv/bin/python scripts/bench_instructions.py --targets forwarder,omniroute,norecords

The ``norecords`` target is the gateway with the ``request_log`` setting off (no usage
records): with ``omniroute`` beside it the table adds what records cost per request,
in instructions (the target is 5 % at most). The ``full`` target is the gateway with
1,000,000 records put in its request log before it starts (issue 8: the cost per request
stays flat as the table grows). The ``cacheoff`` target is the gateway with ``cache_mode=off``
(sent the very same requests): ``--targets omniroute,cacheoff --concerns cache`` gives what
a cache miss costs over no cache, in one run (issue 9: 1.03× at most).

Under callgrind a process runs some 50× slower, so whatever runs per second of
wall time (the request log's flush every 0.5 s, the configuration poll, budget
syncs) would weigh 50× more per request than it does at full speed. So each
server runs through this script's runner (``--run``), which makes every
``asyncio.sleep`` of 0.1 s or more 1000× longer, and every ``asyncio.timeout`` of
0.1 s or more too (the loops that wait for a wake-up or their period, as the shared
state's sync does; a request path's timeouts then never fire, as they would not at
full speed): the background loops do not run during a measured cell; nothing on a
request's path sleeps that long. It also writes the request log on demand
(SIGUSR1) once per cell: one flush of ``--requests`` records, about what one 0.5 s
flush holds at full speed.

``--cprofile`` measures the same cells with cProfile instead of callgrind
(switched on and off by SIGUSR2) and prints each server's top functions; its
table gives Python calls per request. ``--opcodes`` counts instead the bytecodes the
event loop's thread executes, per function (``sys.settrace`` opcode events: as
deterministic as callgrind, and it names the Python functions callgrind cannot see
inside the interpreter); its table gives bytecodes per request, about 100 Ir each.
The hash seed is fixed so runs repeat.

``--first-byte`` counts only what runs from a request's bytes arriving to the end of
its first body write (time to first byte is CPU in that window: issue 7's paced-stream
target), on the stream lanes: ``paced`` (the fake's stream of 20 chunks 10 ms apart)
and ``instant``. The runner turns callgrind's collection on when the server's
``RequestHandler.data_received`` sees a request's first bytes and off once its first
``StreamResponse.write`` returns (a client request ``CALLGRIND_TOGGLE_COLLECT``, from a
four-line C helper the script compiles with ``gcc`` against valgrind's ``callgrind.h``),
in the event loop's thread only; with ``--opcodes`` the same window gates the
bytecode counter, which then names what runs before the first write.

    .venv/bin/python scripts/bench_instructions.py --loop uvloop --lanes paced \
        --concurrency 1 --requests 30 --warmup 10 --first-byte
    .venv/bin/python scripts/bench_instructions.py --loop uvloop --lanes paced \
        --concurrency 1 --requests 30 --warmup 10 --first-byte --opcodes --top 60

    .venv/bin/python scripts/bench_instructions.py --opcodes --targets omniroute,redis \
        --concerns all --lanes json --concurrency 1 --requests 100 --top 40
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from bench_counts import BRANCH_MISSES, CACHE_MISSES, print_opcodes, print_profile, totals
from bench_fakes import (
    ANTHROPIC_INSTANT_REQUEST,
    ANTHROPIC_TAIL,
    DONE,
    HOST,
    INSTANT_REQUEST,
    REQUEST,
    forwarder_app,
    serve_app,
)
from bench_procs import free_port
from bench_runner import run_server

SCRIPTS = Path(__file__).resolve().parent
#: the paced stream of ``bench.py``'s paced lane (20 chunks 10 ms apart)
PACED_REQUEST = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
LANES = {"json": (REQUEST, None), "instant": (INSTANT_REQUEST, DONE),
         "paced": (PACED_REQUEST, DONE),
         # bench.py's cross-format lane: an Anthropic client's instant stream, translated
         # from the OpenAI upstream (the gateway only: the forwarder cannot translate)
         "cross": (ANTHROPIC_INSTANT_REQUEST, ANTHROPIC_TAIL.encode() + b"\n\n"),
         # a Responses client's (Codex's) instant stream, translated from the OpenAI upstream
         "responses": ({"model": INSTANT_REQUEST["model"], "stream": True,
                        "max_output_tokens": 64, "input": REQUEST["messages"][1]["content"],
                        "instructions": REQUEST["messages"][0]["content"]}, None)}
#: the path of a lane's requests (the others: /v1/chat/completions)
PATHS = {"cross": "/v1/messages", "responses": "/v1/responses"}
#: ``--first-byte``'s helper: a callgrind client request, callable through ctypes
TOGGLE_C = """#include <valgrind/callgrind.h>
void omniroute_cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


# ------------------------------------------------------------------ starting the servers

class Server:
    """One server under test, run through the runner, under callgrind or cProfile."""

    #: ``--cache-sim``: callgrind simulates the caches too, with these options (set for
    #: the whole run; None: no simulation)
    cache_sim: list[str] | None = None
    #: ``--branch-sim``: callgrind simulates the branch predictors too
    branch_sim = False
    #: ``--threads``: callgrind counts each thread apart (the event loop's is the first)
    threads = False

    def __init__(self, name: str, tmp: Path, profile: bool | str,
                 toggle_lib: Path | None = None) -> None:
        """:param profile: False (callgrind), True (cProfile) or ``"opcodes"``.
        :param toggle_lib: ``--first-byte``'s helper: count only the first-byte windows."""
        self.name, self.tmp, self.profile = name, tmp, profile
        self.toggle_lib = toggle_lib
        self.flushed = tmp / f"{name}.flushed"
        self.prof = tmp / f"{name}.prof"
        self.proc: subprocess.Popen | None = None
        self.base = ""

    def start(self, argv: list[str], ready: str, env: dict[str, str]) -> None:
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        runner = [sys.executable, str(Path(__file__)), "--run", str(self.flushed)]
        if self.profile:
            runner += ["--profile-to", str(self.prof)]
            if self.profile == "opcodes":
                runner.append("--opcodes")
        if self.toggle_lib:
            runner += ["--toggle-lib", str(self.toggle_lib)]
        if not self.profile:
            runner = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                      *(["--collect-atstart=no"] if self.toggle_lib else []),
                      *(["--cache-sim=yes", *self.cache_sim] if self.cache_sim is not None
                        else []),
                      *(["--branch-sim=yes"] if self.branch_sim else []),
                      *(["--separate-threads=yes"] if self.threads else []),
                      f"--callgrind-out-file={self.tmp / self.name}.%p.out", "--dump-instr=no",
                      "--compress-strings=no", *runner]
        log = self.tmp / f"{self.name}.log"
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([*runner, "--", *argv], env=env, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + ready, timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def flush(self) -> None:
        """Have the request log write what waits; return once it has."""
        self.flushed.unlink(missing_ok=True)
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not self.flushed.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the request log was not written")
            time.sleep(0.1)

    def control(self, *args: str) -> None:
        assert self.proc is not None
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=120)


def start_forwarder(tmp: Path, upstream: str, env: dict[str, str], profile: bool | str,
                    settings: list[str], loop: str, toggle_lib: Path | None = None) -> Server:
    server = Server("forwarder", tmp, profile, toggle_lib)
    server.start([str(Path(__file__)), "--serve-forwarder", upstream, "--port", "{port}",
                  "--loop", loop], "/", env)
    return server


def start_gateway(tmp: Path, upstream: str, env: dict[str, str], profile: bool | str,
                  settings: list[str], loop: str, name: str = "omniroute",
                  rows: int = 0, toggle_lib: Path | None = None) -> Server:
    data = tmp / f"{name}-data"
    env = {k: v for k, v in env.items() if not k.startswith("OMNIROUTE_")}
    for setting in settings:  # name=value, pinned through the environment
        setting_name, _, value = setting.partition("=")
        env[f"OMNIROUTE_{setting_name.upper()}"] = value
    env["INITIAL_PASSWORD"] = "bench-password"
    cli = ["-m", "omniroute.cli", "--data-dir", str(data)]
    subprocess.run([sys.executable, *cli, "providers", "add", "--type", "openai", "--name",
                    "bench", "--prefix", "bench", "--base-url", f"{upstream}/v1", "--api-key",
                    "sk-bench"], check=True, env=env, capture_output=True)
    if rows:
        from bench_usage import prefill

        took = prefill(data / "omniroute.sqlite3", rows)
        print(f"  {rows:,} records put in {name}'s request log in {took:.1f} s",
              file=sys.stderr, flush=True)
    server = Server(name, tmp, profile, toggle_lib)
    server.start([*cli, "serve", "--port", "{port}", "--log-level", "warning", "--loop",
                  loop], "/api/monitoring/health", env)
    return server


def start_norecords(tmp: Path, upstream: str, env: dict[str, str], profile: bool | str,
                    settings: list[str], loop: str, toggle_lib: Path | None = None) -> Server:
    """The gateway with usage records off (the ``request_log`` setting)."""
    return start_gateway(tmp, upstream, env, profile, [*settings, "request_log=false"], loop,
                         name="norecords", toggle_lib=toggle_lib)


def start_cacheoff(tmp: Path, upstream: str, env: dict[str, str], profile: bool | str,
                   settings: list[str], loop: str, toggle_lib: Path | None = None) -> Server:
    """The gateway with the response cache off (``cache_mode=off``, pinned after the
    others: it wins over the ``cache_mode=on`` of ``--concerns cache``), sent the same
    requests: beside ``omniroute`` with ``--concerns cache`` it says what a miss adds."""
    return start_gateway(tmp, upstream, env, profile, [*settings, "cache_mode=off"], loop,
                         name="cacheoff", toggle_lib=toggle_lib)


def start_full(tmp: Path, upstream: str, env: dict[str, str], profile: bool | str,
               settings: list[str], loop: str, toggle_lib: Path | None = None) -> Server:
    """The gateway with 1,000,000 records in its request log before it starts (the
    background prune at the row cap does not run in a measured cell: see above)."""
    return start_gateway(tmp, upstream, env, profile, settings, loop, name="full",
                         rows=1_000_000, toggle_lib=toggle_lib)


STARTERS = {"forwarder": start_forwarder, "omniroute": start_gateway,
            "norecords": start_norecords, "full": start_full, "cacheoff": start_cacheoff}


def concerns(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Give a started gateway the ``--concerns`` it lacks (through the management API):
    the connection's limits (``lim``), an API key with limits and a budget (``key``);
    return what :func:`send` needs for them (the key's header, new requests)."""
    from bench_redis import limit_connection, limited_key

    if not args.concerns or server.name == "forwarder":
        return {}
    port = int(server.base.rsplit(":", 1)[1])
    extra: dict[str, Any] = {"unique": True, "idem": "idem" in args.concerns}
    if "lim" in args.concerns:
        limit_connection(port)
    if "key" in args.concerns:
        extra["headers"] = limited_key(port)
    return extra


# ------------------------------------------------------------------ measuring

#: the requests' numbers across every cell of a target (``--concerns``: each request a new
#: one); every target counts from 0, so each is sent the very same bodies (each has a cache
#: of its own: never a hit)
NUMBERS = itertools.count()


async def send(url: str, body: dict[str, Any], tail: bytes | None, count: int, conc: int,
               headers: dict[str, str] | None = None, unique: bool = False,
               idem: bool = False) -> None:
    """``count`` requests, ``conc`` at a time over keep-alive connections; all must succeed.

    :param headers: sent with every request (an API key).
    :param unique: every request is a new one: a number of its own in its last message
        (a response cache misses).
    :param idem: with ``unique``, every request has its own ``Idempotency-Key`` too.
    """
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    left = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def worker() -> None:
            for _ in left:
                sent, sent_headers = data, headers
                if unique:
                    n = next(NUMBERS)
                    sent = data.replace(b"about the sea.", f"about the sea. {n}".encode())
                    if idem:
                        sent_headers = {**headers, "Idempotency-Key": f"bench-{os.getpid()}-{n}"}
                async with http.post(url, data=sent, headers=sent_headers) as resp:
                    answer = await resp.read()
                    if resp.status != 200 or (tail and not answer.endswith(tail)):
                        raise RuntimeError(f"{url}: {resp.status} {answer[:300]!r}")

        await asyncio.gather(*(worker() for _ in range(conc)))


def measure(server: Server, args: argparse.Namespace, keep: Path | None) -> dict[str, float]:
    """Per lane and concurrency: warm up, count ``--requests`` requests, report per request."""
    global NUMBERS
    NUMBERS = itertools.count()
    out: dict[str, float] = {}
    extra = concerns(server, args)
    assert server.proc is not None
    pid = server.proc.pid
    for lane in args.lanes:
        body, tail = LANES[lane]
        if lane in PATHS and server.name == "forwarder":
            continue
        url = server.base + PATHS.get(lane, "/v1/chat/completions")
        for conc in args.concurrency:
            cell = f"{server.name}-{lane}-c{conc}"
            asyncio.run(send(url, body, tail, args.warmup, conc, **extra))
            server.flush()
            if args.cprofile or args.opcodes:
                server.prof.unlink(missing_ok=True)
                server.signal(signal.SIGUSR2)
                asyncio.run(send(url, body, tail, args.requests, conc, **extra))
                server.flush()
                server.signal(signal.SIGUSR2)
                out[f"{lane} c={conc}"] = (print_opcodes if args.opcodes
                                            else print_profile)(server.prof, cell, args)
                continue
            for old in server.tmp.glob(f"{server.name}.{pid}.out*"):
                old.unlink()
            server.control("-i", "on")
            server.control("-z")
            asyncio.run(send(url, body, tail, args.requests, conc, **extra))
            server.flush()
            server.control("-d")
            server.control("-i", "off")
            dumps = sorted(server.tmp.glob(f"{server.name}.{pid}.out.*"),
                           key=lambda p: p.stat().st_mtime)
            last = last_dump(dumps)
            events: dict[str, int] = {}
            for dump in last:  # (one file, or with --threads one a thread)
                for event, count in totals(dump).items():
                    events[event] = events.get(event, 0) + count
            per_request = events["Ir"] / args.requests
            out[f"{lane} c={conc}"] = per_request
            if args.threads:  # the first thread's: the event loop's
                out[f"{lane} c={conc} loop"] = totals(last[0])["Ir"] / args.requests
            if keep:
                for dump in last:
                    thread = dump.name.rpartition("-")[2] if args.threads else ""
                    shutil.copy(dump, keep / f"{cell}{'-' + thread if thread else ''}.out")
            misses = ""
            if args.cache_sim:  # the simulated caches' misses (first level, last level)
                for label, names in CACHE_MISSES.items():
                    n = sum(events.get(e, 0) for e in names) / args.requests
                    out[f"{lane} c={conc} {label}"] = n
                    misses += f" {n:9,.0f} {label}"
            if args.branch_sim:  # mispredicted branches: conditional, then indirect
                for label, names in BRANCH_MISSES.items():
                    n = sum(events.get(e, 0) for e in names) / args.requests
                    out[f"{lane} c={conc} {label}"] = n
                    misses += f" {n:9,.0f} {label}"
            print(f"  {server.name:<10} {lane:<8} c={conc:<3} {per_request:12,.0f} Ir/request"
                  + misses, file=sys.stderr, flush=True)
    return out


def last_dump(dumps: list[Path]) -> list[Path]:
    """The files of the last dump, oldest first: one, or with ``--threads`` one a thread
    (``NAME.PID.out.DUMP-THREAD``), the event loop's (thread 1) first."""
    if not Server.threads:
        return dumps[-1:]
    number = dumps[-1].name.rsplit(".", 1)[1].partition("-")[0]
    return sorted((d for d in dumps if d.name.rsplit(".", 1)[1].partition("-")[0] == number),
                  key=lambda d: int(d.name.rpartition("-")[2]))


def toggle_helper(tmp: Path, profiled: bool) -> Path:
    """``--first-byte``: the helper that toggles callgrind's collection, compiled into
    ``tmp`` (for the profilers, only a marker: they are gated in Python)."""
    lib = tmp / "cgtoggle.so"
    if profiled:
        return lib
    source = tmp / "cgtoggle.c"
    source.write_text(TOGGLE_C)
    done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(source)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit("--first-byte: could not build the callgrind toggle (gcc and "
                         f"valgrind's callgrind.h are needed):\n{done.stderr}")
    return lib


def main() -> int:
    if sys.argv[1:2] == ["--run"]:  # the runner, in the server's process
        rest = sys.argv[3:]
        profile_to, opcodes = None, False
        if rest[:1] == ["--profile-to"]:
            profile_to, rest = rest[1], rest[2:]
        if rest[:1] == ["--opcodes"]:
            opcodes, rest = True, rest[1:]
        toggle_lib = None
        if rest[:1] == ["--toggle-lib"]:
            toggle_lib, rest = rest[1], rest[2:]
        run_server(rest[rest.index("--") + 1:], Path(sys.argv[2]), profile_to, opcodes,
                   toggle_lib)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="measured requests per cell (300)")
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring (100)")
    p.add_argument("--concurrency", default="1,16", help="levels (1,16)")
    p.add_argument("--lanes", default="json,instant", help="of json,instant,paced,cross,"
                   "responses (json,instant; paced: the fake's stream of 20 chunks 10 ms "
                   "apart; cross: an Anthropic client's instant stream, responses: a "
                   "Responses client's, translated from the OpenAI upstream)")
    p.add_argument("--targets", default="forwarder,omniroute",
                   help="of forwarder,omniroute,norecords,full,cacheoff,redis "
                        "(forwarder,omniroute; norecords: the gateway with request_log off; "
                        "full: with 1,000,000 records in its log; cacheoff: with "
                        "cache_mode=off, whatever --concerns says; redis: the gateway "
                        "with state_url, on a redis-server of its own)")
    p.add_argument("--concerns", default="",
                   help="the gateways' shared concerns, comma-separated: lim (the "
                        "connection's rpm and max_concurrency), key (an API key with rpm, "
                        "concurrency and a daily budget), cache (the response cache, "
                        "missing: each request is a new one), idem (a new Idempotency-Key "
                        "per request); all: the four. Limits far above the load.")
    p.add_argument("--keep", metavar="DIR", help="copy the callgrind (or cProfile) files here")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"],
                   help="the event loop of both servers (asyncio)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a gateway setting, pinned through the environment (repeatable)")
    p.add_argument("--cprofile", action="store_true",
                   help="cProfile instead of callgrind: print each cell's top functions "
                        "(the table gives Python calls per request)")
    p.add_argument("--opcodes", action="store_true",
                   help="count the Python bytecodes executed instead of instructions, per "
                        "function: the table gives bytecodes per request")
    p.add_argument("--first-byte", action="store_true",
                   help="count only from a request's bytes to the end of its first body "
                        "write (stream lanes: paced, instant); callgrind needs gcc and "
                        "valgrind's callgrind.h")
    p.add_argument("--cache-sim", metavar="SIZE,WAYS,LINE", nargs="?", const="1048576,8,64",
                   help="callgrind simulates the caches too: the table adds first- and "
                        "last-level misses per request (I1, D1, LL). Valgrind simulates two "
                        "levels: its last level is SIZE,WAYS,LINE (default 1048576,8,64: "
                        "one core's L2 on this machine's EPYC, the level a larger working "
                        "set misses first); 'host': what valgrind reads from the CPU")
    p.add_argument("--branch-sim", action="store_true",
                   help="callgrind simulates the branch predictors too: the table adds "
                        "mispredicted conditional and indirect branches a request")
    p.add_argument("--threads", action="store_true",
                   help="callgrind counts each thread apart: the table adds the event "
                        "loop's thread alone (the 'loop' rows; the rest is the other "
                        "threads': the request log's writer, the resolver)")
    p.add_argument("--sort", default="tottime", help="--cprofile order (tottime)")
    p.add_argument("--top", type=int, default=40, help="--cprofile/--opcodes rows (40)")
    p.add_argument("--serve-forwarder", metavar="UPSTREAM", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_forwarder:  # the forwarder, in its process
        from aiohttp import web

        loop = None
        if args.loop == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        web.run_app(forwarder_app(args.serve_forwarder), host=HOST, port=args.port,
                    access_log=None, print=None, loop=loop)
        return 0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.lanes = args.lanes.split(",")
    if args.first_byte and "json" in args.lanes:
        p.error("--first-byte counts up to a stream's first write: lanes paced, instant")
    if args.first_byte and args.concurrency != [1]:
        p.error("--first-byte times one request at a time: --concurrency 1")
    if args.first_byte and args.cprofile:
        p.error("--first-byte goes with callgrind or --opcodes, not --cprofile")
    args.concerns = [c for c in args.concerns.split(",") if c]
    if args.concerns == ["all"]:
        args.concerns = ["lim", "key", "cache", "idem"]
    if "cache" in args.concerns:
        args.set = [*args.set, "cache_mode=on"]
    Server.branch_sim = args.branch_sim
    Server.threads = args.threads
    if args.cache_sim:
        Server.cache_sim = [f"--LL={args.cache_sim}"] if args.cache_sim != "host" else []
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS.parent), str(SCRIPTS),
                                                       os.environ.get("PYTHONPATH")]))}
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    upstream_proc = ctx.Process(target=serve_app, args=("upstream", None, "asyncio", ports),
                                daemon=True)
    upstream_proc.start()
    upstream = f"http://{HOST}:{ports.get(timeout=30)}"
    results: dict[str, dict[str, float]] = {}
    profile: bool | str = "opcodes" if args.opcodes else args.cprofile
    try:
        with tempfile.TemporaryDirectory(prefix="omniroute-ir-") as tmpname:
            toggle_lib = (toggle_helper(Path(tmpname), bool(profile)) if args.first_byte
                          else None)
            for name in args.targets.split(","):
                redis = None
                if name == "redis":
                    from bench_redis import start_redis

                    redis_port = free_port()
                    redis = start_redis(redis_port)
                    settings = [*args.set, f"state_url=redis://{HOST}:{redis_port}/0",
                                "state_timeout=10"]  # 50× slower: no call may time out
                    if "cache" in args.concerns:
                        settings.append("cache_backends=redis")
                    server = start_gateway(Path(tmpname), upstream, env, profile,
                                           settings, args.loop, name="redis",
                                           toggle_lib=toggle_lib)
                else:
                    server = STARTERS[name](Path(tmpname), upstream, env, profile,
                                            args.set, args.loop, toggle_lib=toggle_lib)
                try:
                    results[name] = measure(server, args, keep)
                finally:
                    server.stop()
                    if redis is not None:
                        redis.terminate()
                        redis.wait(5)
    finally:
        upstream_proc.terminate()
        upstream_proc.join(5)
    unit = ("Python calls/req" if args.cprofile else "bytecodes/req" if args.opcodes
            else "Ir/req") + (" to the first write" if args.first_byte else "")
    ratios = [(f"{n}/forwarder", n, "forwarder") for n in ("omniroute", "norecords")
              if {n, "forwarder"} <= results.keys()]
    if {"omniroute", "norecords"} <= results.keys():
        ratios.append(("records on/off", "omniroute", "norecords"))
    if {"omniroute", "full"} <= results.keys():
        ratios.append(("1M rows/empty", "full", "omniroute"))
    if {"omniroute", "redis"} <= results.keys():
        ratios.append(("redis/in-process", "redis", "omniroute"))
    if {"omniroute", "cacheoff"} <= results.keys():
        ratios.append(("cache on/off" if "cache" in args.concerns else "omniroute/cacheoff",
                       "omniroute", "cacheoff"))
    print("| cell | " + " | ".join(f"{n} {unit}" for n in results)
          + "".join(f" | {label}" for label, _, _ in ratios) + " |")
    print("|---|" + "---:|" * (len(results) + len(ratios)))
    for cell in next(iter(results.values())):
        values = [results[n][cell] for n in results]
        print(f"| {cell} | " + " | ".join(f"{v:,.0f}" for v in values)
              + "".join(f" | {results[a][cell] / results[b][cell]:.3f}×"
                        for _, a, b in ratios) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
