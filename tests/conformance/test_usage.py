"""Usage records across the matrix: each client API x each provider type, JSON and stream.

The fake upstream reports rich usage (cache reads and writes, reasoning, where
its wire format has them); the record must hold exactly those counts on both
lanes (pass-through where client and provider speak one format, translated
elsewhere), with the timings and the attempt log. When the upstream sends no
counts, the record carries the local estimate, marked ``usage_estimated``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from genai_prices import Usage, calc_price

from conformance.conftest import cells
from conformance.harness import ECHO, Cell

CLIENTS = ["openai", "anthropic", "responses", "gemini", "ollama"]
HI = [{"role": "user", "content": "hi there"}]

#: what each fake reports (its own field names) and the counts the record must hold:
#: (input, output, cache read, cache write, reasoning); None where the format has no field
RICH: dict[str, tuple[dict[str, Any], tuple[int | None, ...]]] = {
    "openai": ({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 5},
                "completion_tokens_details": {"reasoning_tokens": 12}},
               (100, 40, 30, 5, 12)),
    # Anthropic's input_tokens leaves out the cache reads and writes; the record counts all
    "anthropic": ({"input_tokens": 60, "output_tokens": 40, "cache_read_input_tokens": 30,
                   "cache_creation_input_tokens": 10}, (100, 40, 30, 10, None)),
    # Gemini's candidates leave out the thoughts; the record's output counts both
    "gemini": ({"promptTokenCount": 100, "candidatesTokenCount": 28, "thoughtsTokenCount": 12,
                "cachedContentTokenCount": 30, "totalTokenCount": 140},
               (100, 40, 30, None, 12)),
    "responses": ({"input_tokens": 100, "output_tokens": 40, "cached_tokens": 30,
                   "reasoning_tokens": 12}, (100, 40, 30, None, 12)),
    "ollama": ({"prompt_eval_count": 100, "eval_count": 40}, (100, 40, None, None, None)),
}
_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
           "reasoning_tokens")
#: the genai-prices provider of each fake's connection (None: a local server, free)
_PRICED_AS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google",
              "responses": "openai", "ollama": None}


def _list_price(cell: Cell, counts: tuple[int | None, ...]) -> float:
    """What genai-prices itself says the counts cost on the cell's upstream model (the
    gateway reads the same database through its own compact table)."""
    provider = _PRICED_AS[cell.up.name]
    if provider is None:
        return 0.0
    inp, out, read, write, _ = counts
    return float(calc_price(
        Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
              cache_write_tokens=write), model_ref=cell.up.model,
        provider_id=provider).total_price)


def _request(client: str, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """The path and body of a plain chat request in ``client``'s API."""
    if client == "openai":
        body: dict[str, Any] = {"model": model, "messages": HI, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body
    if client == "anthropic":
        return "/v1/messages", {"model": model, "max_tokens": 256, "messages": HI,
                                "stream": stream}
    if client == "responses":
        return "/v1/responses", {"model": model, "input": "hi there", "stream": stream,
                                 "store": False}
    if client == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{model}:{method}", {
            "contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
    return "/api/chat", {"model": model, "messages": HI, "stream": stream}


async def _send(cell: Cell, stream: bool) -> tuple[Any, dict[str, Any]]:
    """Send the client's request, read the answer to its end; the response and the record."""
    path, body = _request(cell.client, cell.model, stream)
    resp = await cell.gw.client.post(path, json=body)
    raw = await resp.read()
    assert resp.status == 200, raw
    assert await cell.gw.log.flush() == 1
    return resp, (await cell.gw.log.recent(1))[0]


def _check_record(cell: Cell, record: dict[str, Any], stream: bool) -> None:
    assert record["client_format"] == cell.client
    assert record["provider"] == cell.up.prefix and record["status"] == 200
    assert bool(record["stream"]) is stream and record["error_class"] is None
    assert 0 < record["ttfb_ms"] <= record["ttfc_ms"] <= record["latency_ms"]
    assert record["tokens_per_s"] > 0
    tries = orjson.loads(record["attempt_log"])
    assert [(t["target"].split(" ")[0], t["failure"], t["status"]) for t in tries] == [
        (f"{cell.up.prefix}/{cell.up.model}", None, 200)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cell", cells(CLIENTS), indirect=True)
async def test_token_counts_are_the_upstreams(cell: Cell, stream: bool) -> None:
    sent, expected = RICH[cell.up.name]
    cell.script(cell.up.module.reply(text="Hello there, friend.", chunks=3, usage=sent))
    resp, record = await _send(cell, stream)
    assert tuple(record[name] for name in _COUNTS) == expected, record
    assert not record["usage_estimated"]
    # priced with the upstream's counts: cache reads and writes at their own rates
    assert record["cost_usd"] == pytest.approx(_list_price(cell, expected), rel=1e-9), record
    _check_record(cell, record, stream)
    if not stream:  # a JSON answer says what it used in its headers; a stream cannot
        assert float(resp.headers["X-OmniRoute-Response-Cost"]) == pytest.approx(
            record["cost_usd"], abs=1e-10)
        assert resp.headers["X-OmniRoute-Tokens-In"] == str(expected[0])
        assert resp.headers["X-OmniRoute-Tokens-Out"] == str(expected[1])
        assert float(resp.headers["X-OmniRoute-Latency-Ms"]) >= 0
    else:
        assert "X-OmniRoute-Tokens-In" not in resp.headers


#: the counts an upstream leaves out (its fake then reports null)
_NO_USAGE: dict[str, Callable[[], dict[str, Any]]] = {
    "openai": lambda: {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    "ollama": lambda: {"prompt_eval_count": None, "eval_count": None},
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cell", cells(CLIENTS, list(_NO_USAGE)), indirect=True)
async def test_without_upstream_usage_the_record_holds_an_estimate(
        cell: Cell, stream: bool) -> None:
    cell.script(cell.up.module.reply(text=ECHO, chunks=3, usage=_NO_USAGE[cell.up.name]()))
    _, record = await _send(cell, stream)
    assert record["usage_estimated"] == 1
    assert 2 <= record["prompt_tokens"] <= 20, record  # "hi there" with its framing
    assert 5 <= record["completion_tokens"] <= 12, record  # the echo: about 8 tokens
    _check_record(cell, record, stream)
