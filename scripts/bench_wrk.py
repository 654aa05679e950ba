"""The benchmark's native load generator: wrk, one thread, for the closed-loop cells.

``bench.py --load wrk`` runs the closed-loop lanes (JSON, instant streams, embeddings)
with wrk instead of the Python client of ``bench_client.py``: at a few thousand
requests per second the Python client needs most of a core, wrk a tenth of one, so
on two cores the gateway gets the rest. The paced lane stays on the Python client
(wrk cannot time chunks).

Each cell writes a Lua script that sets the method, the same body the Python client
posts and its headers, and prints one JSON line from wrk's ``done`` hook. A warm-up
run (``warmup`` seconds) comes first; the server's CPU is read from ``/proc`` around
the measured run and wrk's own from the rusage of reaped children, so the report
can say how many CPUs were left to the server. wrk counts a non-2xx answer as an
error; it does not look at the body, so :func:`check_answer` makes one request
first and checks that the answer ends as it should.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_procs import cpu_ms

#: wrk's done hook: requests, errors by kind, window and latency percentiles (µs)
DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


#: seconds between the warm-up run and the measured one
SETTLE = 0.3


def lua_string(text: str) -> str:
    """``text`` as a Lua long string, at a bracket level it does not contain."""
    level = next(n for n in range(10) if f"]{'=' * n}]" not in text)
    return f"[{'=' * level}[{text}]{'=' * level}]"


def script(body: dict[str, Any], headers: dict[str, str]) -> str:
    """The Lua script of a cell: POST ``body`` (as the Python client's json.dumps) with
    ``headers`` and Content-Type, and the JSON summary at the end."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + DONE_HOOK


def wrk_binary() -> str:
    """
    :raises RuntimeError: wrk is not installed (``scripts/bench-tools.sh`` installs it).
    """
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: run scripts/bench-tools.sh")
    return found


def reaped_cpu_ms() -> float:
    """CPU time of this process's children that have ended and been waited for (wrk's
    runs: once ended they are no longer in ``/proc``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def run_wrk(lua: Path, url: str, conc: int, seconds: float) -> tuple[dict[str, Any], float]:
    """One wrk run: its summary and the CPU milliseconds wrk used.

    :raises RuntimeError: wrk failed or printed no summary.
    """
    before = reaped_cpu_ms()
    done = subprocess.run(
        [wrk_binary(), "-t1", f"-c{conc}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "10s",
         "-s", str(lua), url], capture_output=True, text=True, check=False)
    used = reaped_cpu_ms() - before
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")]
    if done.returncode or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(lines[-1].split(" ", 1)[1]), used


def check_answer(url: str, body: dict[str, Any], headers: dict[str, str], tail: str | None
                 ) -> None:
    """One request as the cell sends it: a 200 whose body ends with ``tail``.

    :raises RuntimeError: another answer (wrk would count it as a success).
    """
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, answer = resp.status, resp.read()
    except OSError as exc:
        raise RuntimeError(f"{url} failed: {exc}") from exc
    if status != 200 or (tail is not None and not answer.strip().endswith(tail.strip().encode())):
        raise RuntimeError(f"{url} answered {status}: {answer[-300:]!r}")


def wrk_cell(tmp: Path, url: str, body: dict[str, Any], conc: int, warmup: float,
             duration: float, pids: list[int], upstream: list[int], tail: str | None = None,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A closed-loop cell with wrk: the same keys as ``bench_client.loop_cell``'s, and the
    CPUs that wrk (``load_cpus``) and the upstream processes ``upstream``
    (``upstream_cpus``) kept busy during the measured run."""
    headers = headers or {}
    check_answer(url, body, headers, tail)
    lua = tmp / "cell.lua"
    lua.write_text(script(body, headers))
    run_wrk(lua, url, conc, warmup)
    # wrk ends a run with requests in flight: let the server finish with them first
    time.sleep(SETTLE)
    cpu0, up0, began = cpu_ms(pids), cpu_ms(upstream), time.monotonic()
    summary, load_ms = run_wrk(lua, url, conc, duration)
    cpu1, up1, wall = cpu_ms(pids), cpu_ms(upstream), time.monotonic() - began
    ok = summary["requests"] - summary["status"]
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"requests": ok, "errors": errors, "rps": ok / (summary["duration_us"] / 1e6),
            "p50_ms": summary["p50_us"] / 1000, "p99_ms": summary["p99_us"] / 1000,
            "cpu_ms_per_req": (cpu1 - cpu0) / ok if ok else None,
            "load_cpus": load_ms / 1000 / wall,
            # direct: the server under test is the upstream
            "upstream_cpus": (up1 - up0) / 1000 / wall if upstream != pids else None}
