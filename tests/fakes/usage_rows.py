"""Synthetic usage records, many at once: the dashboard's performance test and demo.

:func:`fill` writes ``rows`` records spread over the last ``days`` days straight into
a gateway database's request log (one ``executemany`` per 100,000 rows, much faster
than the request log's writer), then rebuilds the hourly and daily totals from them
the way migration 5 does. The mix looks like a real gateway's: a few keys, a dozen
models on six accounts (one a subscription, priced 0 at its list price), busier
during the day, about 3 % failures with their attempt logs, some cache hits.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from pathlib import Path

import orjson

from omniroute.storage import rollup

#: (connection id, prefix, name, subscription?)
CONNECTIONS = [
    ("conn_openai", "openai", "openai-work", False),
    ("conn_openai2", "openai", "openai-home", False),
    ("conn_anthropic", "anthropic", "anthropic", False), ("conn_groq", "groq", "groq", False),
    ("conn_gemini", "gemini", "gemini", False), ("conn_claude_sub", "claude", "claude-max", True),
]
#: (model, connection ids it is served by, USD per 1M input, per 1M output)
MODELS = [
    ("gpt-4.1", ("conn_openai", "conn_openai2"), 2.0, 8.0),
    ("gpt-4.1-mini", ("conn_openai", "conn_openai2"), 0.4, 1.6),
    ("gpt-4o-mini", ("conn_openai",), 0.15, 0.6),
    ("o4-mini", ("conn_openai2",), 1.1, 4.4),
    ("claude-sonnet-4-5", ("conn_anthropic", "conn_claude_sub"), 3.0, 15.0),
    ("claude-haiku-4-5", ("conn_anthropic",), 1.0, 5.0),
    ("claude-opus-4-1", ("conn_claude_sub",), 15.0, 75.0),
    ("llama-3.3-70b-versatile", ("conn_groq",), 0.59, 0.79),
    ("qwen3-32b", ("conn_groq",), 0.29, 0.59),
    ("gemini-2.5-pro", ("conn_gemini",), 1.25, 10.0),
    ("gemini-2.5-flash", ("conn_gemini",), 0.3, 2.5),
    ("text-embedding-3-small", ("conn_openai",), 0.02, 0.0),
]
KEYS = ["key_laptop", "key_ci", "key_claude_code", "key_codex", "key_team_a", "key_team_b",
        "key_batch", None]
_PREFIX = {cid: prefix for cid, prefix, _, _ in CONNECTIONS}
_SUBSCRIPTION = {cid for cid, _, _, sub in CONNECTIONS if sub}
_COLUMNS = ("request_id", "ts", "api_key_id", "endpoint", "model_requested", "provider",
            "connection_id", "model", "stream", "status", "error", "prompt_tokens",
            "completion_tokens", "cached_tokens", "reasoning_tokens", "latency_ms", "ttfb_ms",
            "attempts", "client_format", "user_agent", "combo", "error_class", "attempt_log",
            "ttfc_ms", "tokens_per_s", "cache_write_tokens", "usage_estimated", "cost_usd",
            "list_cost_usd", "cache_hit")
_FAILURES = [(429, "RateLimited", "rate limit reached for requests"),
             (502, "UpstreamStatusError", "upstream answered 502 Bad Gateway"),
             (504, "UpstreamTimeout", "no first byte within 120 s"),
             (400, "InvalidRequest", "max_tokens is too large for this model")]


def _records(n: int, since: float, until: float, rng: random.Random,  # type: ignore[no-untyped-def]
             ids: dict[str, str]):
    span = until - since
    for i in range(n):
        # busier during the day: reject some night-time draws
        while True:
            ts = since + rng.random() * span
            hour = (ts % 86400) / 3600
            if rng.random() < 0.35 + 0.65 * math.sin(math.pi * max(0.0, min(1.0, (hour - 6) / 14))):
                break
        model, conns, price_in, price_out = MODELS[min(int(rng.paretovariate(1.2)) - 1, 11)]
        conn = conns[0] if len(conns) == 1 or rng.random() < 0.7 else conns[1]
        prefix = _PREFIX[conn]
        subscription = conn in _SUBSCRIPTION
        conn = ids.get(conn, conn)
        key = KEYS[min(int(rng.expovariate(0.45)), len(KEYS) - 1)]
        key = ids.get(key, key) if key else None
        stream = rng.random() < 0.6
        tokens_in = int(rng.lognormvariate(6.5, 1.1))
        tokens_out = 0 if model.startswith("text-embedding") else int(rng.lognormvariate(5.2, 0.9))
        latency = rng.lognormvariate(6.8, 0.6)
        failed = rng.random() < 0.03
        hit = not failed and rng.random() < 0.05
        target = f"{prefix}/{model} ({conn})"
        status, error, error_class = 200, None, None
        attempts = [{"target": target, "failure": None, "status": 200,
                     "ms": round(latency * 0.3, 1)}]
        if failed:
            status, error_class, error = _FAILURES[rng.randrange(len(_FAILURES))]
            attempts = [{"target": target, "failure": error_class, "status": status,
                         "ms": round(latency * 0.2, 1)}]
            tokens_in = tokens_out = 0
        elif rng.random() < 0.04:  # a fallback that worked
            attempts.insert(0, {"target": f"{prefix}/{model} (backup)",
                                "failure": "UpstreamStatusError", "status": 503, "ms": 80.0})
        price = (tokens_in * price_in + tokens_out * price_out) / 1e6
        cost: float | None = price
        listed = None
        if subscription or hit:
            cost, listed = 0.0, price
        yield (f"fill{i:010x}", ts, key, "chat.completions", f"{prefix}/{model}", prefix, conn,
               model, int(stream), status, error, tokens_in, tokens_out,
               int(tokens_in * 0.2) if rng.random() < 0.3 else 0, 0, round(latency, 1),
               round(latency * 0.3, 1), len(attempts), "openai", "demo/1.0", None, error_class,
               orjson.dumps([] if hit else attempts).decode(), round(latency * 0.35, 1),
               round(tokens_out / max(latency / 1000, 0.05), 1), 0, 0, cost, listed, int(hit))


def fill(db_path: Path | str, rows: int, *, days: float = 30.0, now: float | None = None,
         seed: int = 12, ids: dict[str, str] | None = None) -> float:
    """Write ``rows`` records over the last ``days`` days and rebuild the usage totals;
    the seconds it took. The database must exist (opened once by omniroute).

    :param ids: real ids for the made-up connection and key ids (``conn_openai``...),
        so the records name accounts and keys that exist.
    """
    began = time.perf_counter()
    until = time.time() if now is None else now
    rng = random.Random(seed)
    insert = (f"INSERT INTO request_log({', '.join(_COLUMNS)}) "
              f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        records = _records(rows, until - days * 86400, until, rng, ids or {})
        while True:
            chunk = [row for _, row in zip(range(100_000), records, strict=False)]
            if not chunk:
                break
            db.executemany(insert, chunk)
        for table in rollup.TABLES:
            db.execute(f"DELETE FROM {table}")
        for statement in rollup.BACKFILL:
            db.execute(statement)
    return time.perf_counter() - began
