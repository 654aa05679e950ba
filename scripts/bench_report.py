"""The benchmark's report: its tables, the summary lines and the targets (PASS / FAIL).

``results`` is what ``bench.py`` measured: ``results[lane][target][concurrency]`` is
one cell (the median over the rounds), plus ``rss_mib`` per target and, when measured,
``cross`` (``bench_cross.py``) and ``usage_flush`` (``bench_usage.py``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the cross-format lane's target: an Anthropic client translated to the OpenAI upstream
CROSS = "omniroute-anthropic"


def label(kind: str, loop: str, workers: int = 1) -> str:
    return kind + ("+uv" if loop == "uvloop" else "") + (f"-w{workers}" if workers > 1 else "")


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def get(results: dict, lane: str, name: str, conc: int | None, key: str) -> float | None:
    value = results.get(lane, {}).get(name, {}).get(conc, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(cells: dict[str, dict[int, dict]], columns: list[tuple]) -> list[str]:
    """A column is (title, digits, key, ...): several keys are shown as ``a / b``."""
    out = ["| target | conc. | " + " | ".join(c[0] for c in columns) + " |",
           "|---|---:|" + "---:|" * len(columns)]
    for name, by_conc in cells.items():
        for conc, cell in by_conc.items():
            row = [" / ".join(fmt(cell.get(key), digits) for key in keys)
                   for _, digits, *keys in columns]
            out.append(f"| {name} | {conc} | " + " | ".join(row) + " |")
    return out


LOOP_COLUMNS = [("req/s", 0, "rps"), ("p50 ms", 2, "p50_ms"), ("p99 ms", 2, "p99_ms"),
                ("CPU ms/req", 3, "cpu_ms_per_req"), ("errors", 0, "errors"),
                ("busy CPUs", 2, "machine_cpus"),
                # what the load generator and the upstream kept busy (n/a: the upstream is
                # the target)
                ("load CPUs", 2, "load_cpus"), ("upstream CPUs", 2, "upstream_cpus")]
STREAM_COLUMNS = [("streams", 0, "streams"), ("TTFB p50 / p99 ms", 2, "ttfb_p50_ms", "ttfb_p99_ms"),
                  ("total p50 / p99 ms", 1, "total_p50_ms", "total_p99_ms"),
                  ("chunk delay p50 / p99 ms", 2, "chunk_p50_ms", "chunk_p99_ms"),
                  ("CPU ms/stream", 2, "cpu_ms_per_stream"), ("errors", 0, "errors")]


@dataclass
class Check:
    label: str
    value: float | None
    passes: Callable[[float], bool]
    form: str

    def line(self) -> str:
        state = "n/a" if self.value is None else "PASS" if self.passes(self.value) else "FAIL"
        shown = "n/a" if self.value is None else self.form.format(self.value)
        return f"- [{'x' if state == 'PASS' else ' '}] {self.label}: {shown} — {state}"


def checks(args: argparse.Namespace, results: dict[str, Any], loop: str) -> list[Check]:
    """The targets of issue 7 (and the earlier ones): omniroute against the forwarder on
    ``loop``."""
    ours, fwd = label("omniroute", loop), label("forwarder", loop)
    high, slow = max(args.concurrency), min(args.stream_concurrency, default=None)
    out = []
    for c in args.concurrency:
        out.append(Check(f"JSON CPU per request at c={c} ≤ 1.25× forwarder", over(
            get(results, "json", ours, c, "cpu_ms_per_req"),
            get(results, "json", fwd, c, "cpu_ms_per_req")), lambda v: v <= 1.25, "{:.2f}×"))
    out.append(Check(f"JSON throughput at c={high} ≥ 75% of forwarder", over(
        get(results, "json", ours, high, "rps"), get(results, "json", fwd, high, "rps")),
        lambda v: v >= 0.75, "{:.0%}"))
    for c in args.instant_concurrency if "instant" in args.lanes else []:
        out.append(Check(f"instant stream CPU per stream at c={c} ≤ 1.5× forwarder", over(
            get(results, "instant", ours, c, "cpu_ms_per_req"),
            get(results, "instant", fwd, c, "cpu_ms_per_req")), lambda v: v <= 1.5, "{:.2f}×"))
    ttfb = [get(results, "paced", n, slow, "ttfb_p50_ms") for n in (ours, fwd)]
    out.append(Check(f"paced stream TTFB p50 at c={slow} within 0.3 ms of forwarder",
                     None if None in ttfb else ttfb[0] - ttfb[1],  # type: ignore[operator]
                     lambda v: v <= 0.3, "{:+.2f} ms"))
    out.append(Check("RSS after the run ≤ 60 MiB", results["rss_mib"].get(ours),
                     lambda v: v <= 60, "{:.1f} MiB"))
    if loop == args.loops[0] and args.compare_workers > 1:
        n = args.compare_workers
        out.append(Check(f"--workers {n} JSON throughput at c={high} ≥ 1.7× one worker's", over(
            get(results, "json", label("omniroute", loop, n), high, "rps"),
            get(results, "json", ours, high, "rps")), lambda v: v >= 1.7, "{:.2f}×"))
        out.append(Check(
            f"--workers {n} JSON throughput at c={high} per CPU free to the gateway ≥ 85% of "
            "one worker's per CPU it used (1.7× of 2 CPUs)",
            scaling(results, label("omniroute", loop), label("omniroute", loop, n), high),
            lambda v: v >= 0.85, "{:.0%}"))
    low = min(args.concurrency)
    p50 = [get(results, "json", n, low, "p50_ms") for n in (ours, "direct")]
    out.append(Check(f"p50 latency added to direct at c={low} < 1 ms",
                     None if None in p50 else p50[0] - p50[1],  # type: ignore[operator]
                     lambda v: v < 1, "{:.2f} ms"))
    out.append(Check(f"paced chunk delivered within 1 ms of leaving the upstream (p50, c={slow})",
                     get(results, "paced", ours, slow, "chunk_p50_ms"), lambda v: v < 1,
                     "{:.2f} ms"))
    if loop == args.loops[0]:
        out.append(Check("cross-format added chunk latency ≤ 1.5× same-format (p50)",
                         results.get("cross", {}).get("ratio"), lambda v: v <= 1.5, "{:.2f}×"))
    return out


def free_cpus(cell: dict) -> float | None:
    """The CPUs the server under test could have had during ``cell``: the machine's, less
    other processes', the load generator's and the upstream's (None: not measured)."""
    if cell.get("load_cpus") is None or cell.get("upstream_cpus") is None:
        return None
    return max(0.0, (os.cpu_count() or 1) - cell["foreign_cpus"] - cell["load_cpus"]
               - cell["upstream_cpus"])


def scaling(results: dict, one: str, many: str, conc: int) -> float | None:
    """How well ``many`` workers scale on the CPUs they had: their requests per second per
    CPU free to them, against one worker's per CPU it kept busy. On two CPUs shared with the
    load generator and the upstream, ``--workers 2`` cannot reach 2× (nor 1.7×) one worker's
    throughput whatever the gateway does; this ratio says what part of the CPUs it had it
    turned into throughput (1.7× of 2 CPUs is 85 %)."""
    a = results.get("json", {}).get(one, {}).get(conc, {})
    b = results.get("json", {}).get(many, {}).get(conc, {})
    free = free_cpus(b) if b else None
    if not a or not free or not a.get("rps") or not a.get("cpu_ms_per_req"):
        return None
    used = a["rps"] * a["cpu_ms_per_req"] / 1000  # the CPUs one worker kept busy
    return (b["rps"] / free) / (a["rps"] / used)


def summary(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    high, slow = max(args.concurrency), min(args.stream_concurrency, default=None)
    out = []
    for loop in args.loops:
        ours, fwd = label("omniroute", loop), label("forwarder", loop)
        parts = []
        for lane, key, levels in (("json", "cpu_ms_per_req", args.concurrency),
                                  ("instant", "cpu_ms_per_req", args.instant_concurrency),
                                  ("embed", "cpu_ms_per_req", args.embed_concurrency),
                                  ("paced", "cpu_ms_per_stream", args.stream_concurrency)):
            if lane in results:
                parts.append(f"{lane} " + ", ".join(
                    f"c={c} {fmt(over(get(results, lane, ours, c, key), get(results, lane, fwd, c, key)), 2, '×')}"  # noqa: E501
                    for c in levels))
        out.append(f"- {loop}: CPU per request, {ours} / {fwd}: " + "; ".join(parts))
        tput = [f"{lane} c={c} {fmt(over(get(results, lane, ours, c, 'rps'), get(results, lane, fwd, c, 'rps')), 2, '×')}"  # noqa: E501
                for lane, c in (("json", high), ("instant", max(args.instant_concurrency)),
                                ("embed", max(args.embed_concurrency))) if lane in results]
        out.append(f"- {loop}: throughput, {ours} / {fwd}: " + ", ".join(tput))
        ttfb = [get(results, "paced", n, slow, "ttfb_p50_ms") for n in ("direct", fwd, ours)]
        out.append(f"- {loop}: paced TTFB p50 at c={slow}: direct {fmt(ttfb[0])} ms, {fwd} "
                   f"{fmt(ttfb[1])} ms, {ours} {fmt(ttfb[2])} ms")
    if len(args.loops) > 1:
        uv, aio = label("omniroute", "uvloop"), label("omniroute", "asyncio")
        parts = [f"{lane} c={c} CPU {fmt(over(get(results, lane, uv, c, 'cpu_ms_per_req'), get(results, lane, aio, c, 'cpu_ms_per_req')), 2, '×')}"  # noqa: E501
                 f" req/s {fmt(over(get(results, lane, uv, c, 'rps'), get(results, lane, aio, c, 'rps')), 2, '×')}"  # noqa: E501
                 for lane, levels in (("json", args.concurrency),
                                      ("instant", args.instant_concurrency))
                 if lane in results for c in levels]
        out.append("- uvloop / asyncio, omniroute: " + "; ".join(parts))
    if args.baseline:  # (the baseline runs on the first loop, as this gateway)
        first = label("omniroute", args.loops[0])
        parts = [f"{lane} c={c} CPU {fmt(over(get(results, lane, first, c, key), get(results, lane, 'baseline', c, key)), 2, '×')}"  # noqa: E501
                 for lane, key, levels in (
                     ("json", "cpu_ms_per_req", args.concurrency),
                     ("instant", "cpu_ms_per_req", args.instant_concurrency),
                     ("embed", "cpu_ms_per_req", args.embed_concurrency),
                     ("paced", "cpu_ms_per_stream", args.stream_concurrency))
                 if lane in results for c in levels]
        out.append(f"- {first} / baseline ({args.baseline}): " + "; ".join(parts))
    flush = results.get("usage_flush")
    if flush:
        out.append(f"- usage records: one flush of {flush['records']:,} records took "
                   f"{flush['empty_s']:.2f} s into an empty table, {flush['full_s']:.2f} s into "
                   f"one holding {flush['rows']:,} rows (put there in {flush['prefill_s']:.1f} s); "
                   f"the retention deleted the {flush['pruned']:,} rows over a "
                   f"{flush['rows']:,}-row bound in {flush['prune_s']:.2f} s")
    if args.compare_workers > 1:
        n = args.compare_workers
        name = label("omniroute", args.loops[0], n)
        cell = results.get("json", {}).get(name, {}).get(high, {})
        one = results.get("json", {}).get(label("omniroute", args.loops[0]), {}).get(high, {})
        if cell and one:
            cpus = os.cpu_count() or 1
            line = (f"- --workers {n} at c={high}: {cell['rps']:.0f} req/s against "
                    f"{one['rps']:.0f} ({over(cell['rps'], one['rps']):.2f}×); {cpus} CPUs, the "
                    f"machine kept {cell['machine_cpus']:.2f} busy during that cell, "
                    f"{cell['foreign_cpus']:.2f} of them other processes' (the load client and "
                    f"upstream are ours), so {max(0.0, cpus - cell['foreign_cpus']):.2f} CPUs "
                    "were free for the benchmark")
            if cell.get("load_cpus") is not None and cell.get("upstream_cpus") is not None:
                # what the gateway could have had: the CPUs less others', wrk's and nginx's
                for who, c in ((label("omniroute", args.loops[0]), one), (name, cell)):
                    line += (f"; for {who}: the load generator used {c['load_cpus']:.2f}, "
                             f"the upstream {c['upstream_cpus']:.2f}, others "
                             f"{c['foreign_cpus']:.2f}, so {free_cpus(c):.2f} CPUs were free "
                             "to the gateway")
                line += (f"; one worker kept {one['rps'] * one['cpu_ms_per_req'] / 1000:.2f} "
                         "CPUs busy")
            out.append(line)
    out.append("- resident memory (VmRSS) after the run: "
               + ", ".join(f"{n} {v:.1f} MiB" for n, v in results["rss_mib"].items()))
    same = label("omniroute", args.loops[0])
    for c in args.instant_concurrency if CROSS in results.get("instant", {}) else []:
        out.append(f"- cross-format instant streams (Anthropic client → OpenAI upstream) at c={c}: "
                   f"CPU per stream {fmt(over(get(results, 'instant', CROSS, c, 'cpu_ms_per_req'), get(results, 'instant', same, c, 'cpu_ms_per_req')), 2, '×')} "  # noqa: E501
                   f"and throughput {fmt(over(get(results, 'instant', CROSS, c, 'rps'), get(results, 'instant', same, c, 'rps')), 2, '×')} "  # noqa: E501
                   f"those of {same} same-format")
    cross = results.get("cross", {})
    if cross:
        out += [f"- cross-format paced stream (Anthropic client → OpenAI upstream) at c={slow}: "
                f"chunk delay added to direct p50 {cross['added_ms']:.2f} ms against "
                f"{cross['same_added_ms']:.2f} ms same-format; extra server CPU "
                f"{fmt(cross['extra_cpu_ms_per_stream'])} ms per stream",
                f"- per-chunk stream translation, in-process: "
                f"{cross['translated_us_per_chunk']:.1f} µs per chunk (OpenAI → canonical → "
                f"Anthropic) against {cross['passthrough_us_per_chunk']:.1f} µs on the "
                "pass-through lane (usage and errors read on the side)"]
    return out
