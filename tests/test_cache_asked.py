"""A new text request kept by its bytes (``Format.asked_text``, the ``memory`` backend's
``Asked`` keys): its miss makes no text form and no exact key; the same question still
meets its answer in any form (the same bytes, a stream, another client format, another
body of the same question), listed and deleted by its exact key's name."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest
from test_cache_text_key import NOT_TEXT, TEXT_BODIES

from omniroute.appkeys import CACHE
from omniroute.cache.key import (
    asked_exact,
    exact_key,
    last_text,
    last_text_of,
    text_exact,
    text_key,
    uncacheable,
)
from omniroute.cache.memory import MemoryCache
from omniroute.errors import GatewayError
from omniroute.formats.base import ClientRequest
from omniroute.formats.openai import OpenAIFormat

FMT = OpenAIFormat()
FORMATS = {"openai": FMT}
IMAGE = {"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
#: text last, something else before it: decoded when it is given its exact key
MIXED = [IMAGE, {"role": "assistant", "content": "A dot."}, {"role": "user", "content": "And?"}]
Q = {"model": "up/gpt-4o-mini", "temperature": 0, "max_tokens": 50,
     "messages": [{"role": "user", "content": "what is 2 + 2?"}]}


def _decoded(body: dict[str, Any]) -> Any:
    try:
        return FMT.decode_request(ClientRequest(body, "m", bool(body.get("stream"))))
    except GatewayError:
        return None


@pytest.mark.parametrize("body", [*TEXT_BODIES, *NOT_TEXT, {"messages": MIXED}])
def test_the_asked_text_is_the_decoded_requests_last_user_text(body: dict[str, Any]) -> None:
    body = {"model": "gpt-4o-mini", **body}
    asked = FMT.asked_text(body)
    request = _decoded(body)
    if asked is None:
        return
    assert request is not None and uncacheable(request) is None
    assert asked == last_text_of(request)
    text = FMT.text_request(body)
    if text is not None:
        assert last_text(text) == asked


def test_only_a_plain_last_user_text_is_asked() -> None:
    assert FMT.asked_text({"model": "m", "messages": MIXED}) == "And?"
    for messages in ([{"role": "user", "content": ""}], [{"role": "assistant", "content": "x"}],
                     [{"role": "user", "content": "x", "name": "bob"}], [], "x"):
        assert FMT.asked_text({"model": "m", "messages": messages}) is None
    assert FMT.asked_text({**Q, "n": 2}) is None and FMT.asked_text({**Q, "logprobs": 1}) is None


@pytest.mark.parametrize("body", [*TEXT_BODIES, {"messages": MIXED}])
def test_a_kept_request_is_given_the_exact_key_the_stage_gives_it(body: dict[str, Any]) -> None:
    body = {"model": "gpt-4o-mini", **body}
    asked = FMT.asked_text(body)
    assert asked is not None
    key = (orjson.dumps(body), "openai", "t1", "up/gpt-4o-mini", asked)
    text = FMT.text_request(body)
    expected = (text_exact(text, "t1", "up/gpt-4o-mini") if text is not None
                else exact_key(_decoded(body), "t1", "up/gpt-4o-mini"))
    assert asked_exact(key, FORMATS) == expected
    assert asked_exact(key, None) is None and asked_exact(key, {}) is None
    assert asked_exact((b"{", *key[1:]), FORMATS) is None  # type: ignore[arg-type]


async def _post(gw: Any, body: dict[str, Any]) -> tuple[str, Any]:
    raw = await gw.client.post("/v1/chat/completions", json=body)
    assert raw.status == 200, await raw.text()
    data = await raw.read()
    await gw.client.app[CACHE].settled()
    return raw.headers["X-OmniRoute-Cache"], data


async def test_a_new_question_is_kept_by_its_bytes_without_a_text_form(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = gw.client.app[CACHE].backends[0]
    formats = gw.client.app[CACHE].formats
    made: list[Any] = []
    text_request = formats["openai"].text_request
    monkeypatch.setattr(formats["openai"], "text_request",
                        lambda body: made.append(body) or text_request(body))
    assert (await _post(gw, Q))[0] == "MISS"
    assert made == []  # no text form made for a new question
    [key] = memory._items
    assert type(key) is tuple and orjson.loads(key[0]) == Q and key[4] == "what is 2 + 2?"
    # listed by its exact key's name
    [row] = await gw.client.app[CACHE].entries(10)
    assert row["key"] == text_key(text_request(Q), "", "up/gpt-4o-mini")
    # the same bytes: a hit, now kept by the exact key
    assert (await _post(gw, Q))[0] == "HIT"
    assert [type(k) for k in memory._items] == [bytes]
    assert len(gw.fake.requests) == 1


async def _claude_verdict(gw: Any) -> str:
    """The cache's verdict on ``Q`` asked through the Anthropic SDK (the same question)."""
    claude = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    msg = await claude.messages.with_raw_response.create(
        model="up/gpt-4o-mini", messages=Q["messages"], max_tokens=50,
        extra_body={"temperature": 0})
    return msg.headers["X-OmniRoute-Cache"]


async def test_a_question_kept_by_its_bytes_is_found_in_any_form(gw: Any) -> None:
    assert (await _post(gw, Q))[0] == "MISS"
    # a stream of the same question (other bytes): found
    stream = await gw.client.post("/v1/chat/completions", json={**Q, "stream": True})
    assert stream.headers["X-OmniRoute-Cache"] == "HIT"
    await stream.read()
    # once kept by its exact key, another body of it still finds it (the index keeps
    # exact keys too: a text that is there is never a miss told at once)
    assert (await _post(gw, {**Q, "user": "ann"}))[0] == "HIT"
    assert (await _post(gw, {**Q, "max_tokens": 51}))[0] == "MISS"  # another question
    assert await _claude_verdict(gw) == "HIT"
    assert len(gw.fake.requests) == 2


async def test_another_client_format_finds_a_question_kept_by_its_bytes(gw: Any) -> None:
    assert (await _post(gw, Q))[0] == "MISS"
    assert await _claude_verdict(gw) == "HIT"
    assert len(gw.fake.requests) == 1


async def test_a_kept_request_that_is_not_text_is_decoded_for_its_key(gw: Any) -> None:
    body = {**Q, "messages": MIXED}
    assert (await _post(gw, body))[0] == "MISS"
    assert type(next(iter(gw.client.app[CACHE].backends[0]._items))) is tuple
    assert (await _post(gw, body))[0] == "HIT"
    assert len(gw.fake.requests) == 1


async def test_a_kept_request_is_deleted_by_its_name(gw: Any) -> None:
    assert (await _post(gw, Q))[0] == "MISS"
    name = text_key(FMT.text_request(Q), "", "up/gpt-4o-mini")  # type: ignore[arg-type]
    assert await gw.client.app[CACHE].delete(name)
    assert (await _post(gw, Q))[0] == "MISS"


async def test_tenants_never_share_an_entry_kept_by_bytes() -> None:
    memory = MemoryCache({})
    memory.formats = FORMATS  # type: ignore[assignment]
    raw = orjson.dumps(Q)
    memory.put_later((raw, "openai", "t1", "up/gpt-4o-mini", "what is 2 + 2?"),
                     (b"{}", "openai", "m", 0.0, 0.0, 1e12, False), 100, 60,
                     "what is 2 + 2?")
    memory.resolve("what is 2 + 2?")
    mine = text_exact(FMT.text_request(Q), "t1", "up/gpt-4o-mini")  # type: ignore[arg-type]
    theirs = text_exact(FMT.text_request(Q), "t2", "up/gpt-4o-mini")  # type: ignore[arg-type]
    assert not memory.absent(mine) and memory.absent(theirs)


async def test_the_index_is_swept_and_bounded() -> None:
    memory = MemoryCache({"max_entries": 8})
    memory.formats = FORMATS  # type: ignore[assignment]
    for n in range(2000):
        body = {**Q, "messages": [{"role": "user", "content": f"q{n}"}]}
        memory.put_later((orjson.dumps(body), "openai", "", "m", f"q{n}"),
                         (b"{}", "openai", "m", 0.0, 0.0, 1e12, False), 100, 60, f"q{n}")
        assert len(memory.asked) <= 2 * 64 + 8
    # every entry is indexed by its text
    assert all(key[4] in memory.asked for key in memory._items)
    assert (await memory.stats())["entries"] == 8
    memory.resolve("q1999")  # given its exact key, counted as that key's size
    total = sum(item[2] for item in memory._items.values())
    assert memory._bytes == total


def test_the_stage_knows_the_formats_that_decode_kept_answers(gw: Any) -> None:
    from omniroute.appkeys import PIPELINE
    from omniroute.cache.stage import CacheStage

    stage = next(s for s in gw.client.app[PIPELINE].stages if isinstance(s, CacheStage))
    formats = gw.client.app[CACHE].formats
    assert stage.asks and formats["openai"] in stage.decodes
    assert stage.decodes == {f for f in formats.values() if formats.get(f.name) is f}
