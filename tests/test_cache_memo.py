"""The memo of cache keys: bounded, and never a key other than the one computed afresh."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from omniroute.appkeys import PIPELINE
from omniroute.cache.key import cache_key, key_name
from omniroute.cache.layer import CacheKey, CacheLayer, LayerHit
from omniroute.cache.memo import KeyMemo, Known
from omniroute.cache.stage import CacheStage
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest
from omniroute.formats.openai import OpenAIFormat

HI = [{"role": "user", "content": "what is 2 + 2?"}]


def key(name: str) -> Known:
    return Known(name, None, c.Request("m"))


def test_the_memo_is_bounded_in_entries_and_bytes() -> None:
    memo = KeyMemo(max_entries=2, max_bytes=160)
    assert memo.put(("a", b"1" * 4), key("a"))
    assert memo.put(("b", b"2" * 4), key("b"))
    assert memo.get(("a", b"1" * 4)) is not None  # a is now the most recent
    memo.put(("c", b"3" * 4), key("c"))  # over two entries: b (least recent) goes
    assert memo.get(("b", b"2" * 4)) is None and len(memo) == 2
    assert not memo.put(("big", b"x" * 11), key("big"))  # past a sixteenth: not kept
    memo.put(("d", b"4" * 10), key("d"))
    memo.put(("e", b"5" * 10), key("e"))
    assert len(memo) == 2 and memo.size == 20
    big = KeyMemo(max_entries=100, max_bytes=16 * 10)
    for n in range(20):
        big.put((n, b"x" * 10), key(str(n)))
    assert big.size <= 160 and len(big) == 16  # bounded by the bytes
    assert big.get((0, b"x" * 10)) is None and big.get((19, b"x" * 10)) is not None
    big.clear()
    assert len(big) == 0 and big.size == 0


def memo_of(gw: Any) -> KeyMemo:
    stage = next(s for s in gw.client.app[PIPELINE].stages if isinstance(s, CacheStage))
    return stage.memo


def assert_fresh(memo: KeyMemo) -> None:
    """Every key the memo holds is the one its inputs give when computed afresh."""
    assert len(memo) > 0
    for slot, known in memo._known.items():
        name, tenant, model, prefix, stream, layers, _mode, query, raw = slot
        assert name == OpenAIFormat.name
        request = OpenAIFormat().decode_request(ClientRequest(orjson.loads(raw), model, stream, {},
                                                   dict(query)))
        scoped = f"{prefix}/{model}" if prefix else model
        full = cache_key(request, tenant, scoped, layers=layers)
        # (a short text request's key is kept as its JSON array: CacheKey.exact names it)
        assert key_name(known.exact) == full.exact and known.key == (full if layers else None)
        assert known.request == request


async def chat(gw: Any, api_key: str = "sk-x", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", HI)
    kwargs.setdefault("model", "up/gpt-4o-mini")
    kwargs.setdefault("temperature", 0)
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    await gw.cache.settled()
    return raw


async def test_a_repeated_hit_answers_as_the_first_hit_did(gw: Any) -> None:
    body = {"model": "up/gpt-4o-mini", "messages": HI, "temperature": 0}
    for stream, first_seen in ((False, "MISS"), (True, "HIT")):  # (a stream: the same key)
        seen, answers = [], []
        for _ in range(4):
            resp = await gw.client.post("/v1/chat/completions", json={**body, "stream": stream})
            seen.append(resp.headers["X-OmniRoute-Cache"])
            answers.append(await resp.read())
            await gw.cache.settled()
        assert seen == [first_seen, "HIT", "HIT", "HIT"]
        # the memo's request (the 3rd and 4th) encodes as the one decoded for the 2nd
        if stream:  # (a replay's id and time are its own)
            shapes = [[orjson.loads(line[6:])["choices"] for line in answer.splitlines()
                       if line.startswith(b"data: {")] for answer in answers[1:]]
        else:
            shapes = [orjson.loads(answer)["choices"] for answer in answers[1:]]
        assert shapes[0] and shapes[1] == shapes[0] and shapes[2] == shapes[0]
    assert len(gw.fake.requests) == 1
    assert len(memo_of(gw)) == 2  # one slot per stream flag
    assert_fresh(memo_of(gw))


async def test_different_bodies_models_and_prefixes_never_share_a_key(gw: Any) -> None:
    assert (await chat(gw)).headers["X-OmniRoute-Cache"] == "MISS"
    other = [{"role": "user", "content": "what is 2 + 3?"}]
    assert (await chat(gw, messages=other)).headers["X-OmniRoute-Cache"] == "MISS"
    assert len(memo_of(gw)) == 0  # misses are not kept
    # the same words, spaced otherwise: other bytes, another slot, but the same key
    body = {"model": "up/gpt-4o-mini", "messages": HI, "temperature": 0}
    spaced = orjson.dumps(body, option=orjson.OPT_INDENT_2)
    resp = await gw.client.post("/v1/chat/completions", data=spaced,
                                headers={"Content-Type": "application/json"})
    assert resp.headers["X-OmniRoute-Cache"] == "HIT"
    # pinned to a provider: its own slot, keyed `up/gpt-4o-mini` as a plain route names it
    pinned = orjson.dumps({**body, "model": "gpt-4o-mini"})
    for _ in range(2):
        resp = await gw.client.post("/v1/providers/up/chat/completions", data=pinned,
                                    headers={"Content-Type": "application/json"})
        assert resp.headers["X-OmniRoute-Cache"] == "HIT"
    # the same bytes unpinned name another model (`gpt-4o-mini`, no prefix): another key
    resp = await gw.client.post("/v1/chat/completions", data=pinned,
                                headers={"Content-Type": "application/json"})
    assert resp.headers["X-OmniRoute-Cache"] == "MISS"
    await gw.cache.settled()
    memo = memo_of(gw)  # only hits are kept: the spaced body and the pinned one
    assert len({known.exact for known in memo._known.values()}) == 1
    assert len(memo) == 2
    assert_fresh(memo)


async def test_tenants_never_share_a_memo_slot(gw: Any) -> None:
    await gw.set_settings(require_api_key=True)
    secrets = {}
    for name in ("a", "b"):
        _, secrets[name] = await gw.store.create_key(name)
    for scheme in gw.auth_schemes.values():
        await scheme.reload()
    seen = [(await chat(gw, secrets[name])).headers["X-OmniRoute-Cache"]
            for name in ("a", "a", "b", "b", "a")]
    assert seen == ["MISS", "HIT", "MISS", "HIT", "HIT"]
    memo = memo_of(gw)
    tenants = {slot[1] for slot in memo._known}
    assert len(tenants) == 2 and len(memo) == 2
    assert_fresh(memo)


async def test_the_mode_and_a_replaced_body_are_part_of_the_slot(gw: Any) -> None:
    assert (await chat(gw, temperature=0.5)).headers["X-OmniRoute-Cache"] == "BYPASS"
    assert len(memo_of(gw)) == 0  # never kept: not cacheable in this mode
    await gw.set_settings(cache_mode="on")
    assert [(await chat(gw, temperature=0.5)).headers["X-OmniRoute-Cache"]
            for _ in range(2)] == ["MISS", "HIT"]
    await gw.set_settings(cache_mode="deterministic")
    assert (await chat(gw, temperature=0.5)).headers["X-OmniRoute-Cache"] == "BYPASS"
    assert_fresh(memo_of(gw))


class Toggled(CacheLayer):
    """A layer that holds nothing; whether it is active is the test's to say."""

    name = "toggled"

    def __init__(self) -> None:
        self.on = True
        self.asked: list[CacheKey] = []

    def active(self) -> bool:
        return self.on

    async def lookup(self, key: CacheKey) -> LayerHit | None:
        self.asked.append(key)
        return None

    async def store(self, key: CacheKey, entry: bytes, ttl: float) -> None:
        pass

    async def clear(self) -> None:
        pass


async def test_a_layer_active_or_not_gets_its_own_keys(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = Toggled()
    monkeypatch.setattr(gw.cache, "layers", [layer])
    assert [(await chat(gw)).headers["X-OmniRoute-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    memo = memo_of(gw)
    (known,) = memo._known.values()
    assert known.key is not None  # what layers read
    assert known.key.scope and known.key.prompt == "what is 2 + 2?"
    layer.on = False
    assert (await chat(gw)).headers["X-OmniRoute-Cache"] == "HIT"  # the same exact key
    assert len(memo) == 2
    first, second = memo._known.values()
    assert first.exact == second.exact and second.key is None  # no layer: the exact key only
    other = [{"role": "user", "content": "and 3 + 3?"}]
    layer.on = True
    assert (await chat(gw, messages=other)).headers["X-OmniRoute-Cache"] == "MISS"
    assert layer.asked[-1].prompt == "and 3 + 3?"  # the layer sees a full key
    assert_fresh(memo)


def test_entries_read_back_are_remembered_bounded() -> None:
    from omniroute.cache import entry as entries
    def data(text: str) -> bytes:
        response = c.Response("id", "m", [c.Text(text)], "end_turn")
        return entries.dump(response, "m", 1.0, None)

    loaded = entries.Loaded(max_entries=2, max_bytes=16 * 400)
    first = loaded(data("a"))
    assert first is not None and loaded(data("a")) is first  # the same bytes: not decoded again
    assert first == entries.load(data("a"))
    loaded(data("b"))
    loaded(data("c"))  # over two entries: a (least recent) goes
    assert len(loaded) == 2 and loaded(data("a")) is not first
    assert loaded(b"not an entry") is None and len(loaded) == 2  # (and never remembered)
    big = data("x" * 500)  # past a sixteenth of the bytes: decoded every time
    assert loaded(big) is not None and loaded(big) is not loaded(big)
    assert loaded.size <= 400 * 16


def test_a_body_a_stage_replaced_has_no_slot() -> None:
    from types import SimpleNamespace

    from omniroute.cache.request import memo_slot

    body = {"model": "m", "messages": HI}
    ctx: Any = SimpleNamespace(as_read=(orjson.dumps(body), body), body=body,
                               fmt=OpenAIFormat(), principal=SimpleNamespace(key_id=None),
                               model="m", prefix=None, stream=False, query={})
    assert memo_slot(ctx, "on", False) == ("openai", "", "m", None, False, False, "on", (),
                                       orjson.dumps(body))
    ctx.query = {"a": "1"}
    assert memo_slot(ctx, "on", False)[-2] == (("a", "1"),)  # type: ignore[index]
    ctx.body = {**body}  # replaced (Responses history): decoded every time
    assert memo_slot(ctx, "on", False) is None
    ctx.as_read = None  # not a JSON body as read
    assert memo_slot(ctx, "on", False) is None


def test_a_format_whose_decode_reads_headers_has_no_slot() -> None:
    from types import SimpleNamespace

    from omniroute.cache.request import memo_slot

    class HeaderMinded(OpenAIFormat):
        decode_reads_headers = True

    body = {"model": "m", "messages": HI}
    ctx: Any = SimpleNamespace(as_read=(orjson.dumps(body), body), body=body,
                               fmt=HeaderMinded(), principal=SimpleNamespace(key_id=None),
                               model="m", prefix=None, stream=False, query={})
    assert memo_slot(ctx, "on", False) is None  # its key is computed (decoded) every time


def test_answers_kept_as_they_came_are_decoded_and_checked_when_read() -> None:
    """Version 2 entries (a pass-through answer, stored undecoded) load through their
    format; one that is not storable (truncated, an error, not JSON) never loads."""
    from omniroute.cache import entry as entries
    formats = {"openai": OpenAIFormat()}

    def body(finish: str, text: str = "Hello.") -> bytes:
        return orjson.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    data = entries.dump_body(body("stop"), "openai", "up/gpt", 1.0, 0.5, 9.0)
    entry = entries.load(data, formats)
    assert entry is not None and (entry.model, entry.created, entry.cost, entry.expires) == (
        "up/gpt", 1.0, 0.5, 9.0)
    assert entry.response.parts == [c.Text("Hello.")] and entry.response.usage.output_tokens == 2
    assert entries.header(data, formats)["version"] == entries.BODY_VERSION
    assert entries.load(data) is None  # no formats to read it with: a miss
    for bad in (body("length"), body("stop", text=""), b'{"error": {"message": "no"}}',
                b"not json"):
        assert entries.load(entries.dump_body(bad, "openai", "m", 1.0, None), formats) is None
    frames = b"".join(
        b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 7,
                                  "model": "gpt", "choices": [{"index": 0, **choice}]}) + b"\n\n"
        for choice in ({"delta": {"role": "assistant", "content": "Hel"}},
                       {"delta": {"content": "lo."}},
                       {"delta": {}, "finish_reason": "stop"})) + b"data: [DONE]\n\n"
    data = entries.dump_body(frames, "openai", "m", 1.0, None, stream=True)
    assert data.endswith(b"\n" + frames)  # the frames as they came, after the head line
    streamed = entries.load(data, formats)
    assert streamed is not None and streamed.response.parts == [c.Text("Hello.")]
    assert entries.header(data, formats)["version"] == entries.FRAMES_VERSION
    older = orjson.dumps({"v": 2, "model": "m", "created": 1.0, "cost": None,
                          "format": "openai", "frames": frames.decode()})  # before version 3
    kept = entries.load(older, formats)
    assert kept is not None and kept.response.parts == [c.Text("Hello.")]
    for broken in (data[:data.index(b"\n")], b"#" + data[1:].replace(b'"v":3', b'"v":2', 1)):
        assert entries.load(broken, formats) is None  # no end to its head; a version mixed up
    unfinished = frames.rsplit(b"data: {", 1)[0]  # no finish reason: truncated
    assert entries.load(entries.dump_body(unfinished, "openai", "m", 1.0, None, stream=True),
                        formats) is None


class Switched(Toggled):
    """A layer that follows a setting (``CacheLayer.setting``): the stage reads the setting
    once per settings object, and asks ``active`` no more on its built-in path."""

    setting = "log_bodies"  # (any boolean setting: one that is harmless to turn on)

    def __init__(self, gw: Any) -> None:
        super().__init__()
        self.gw = gw
        self.calls = 0

    def active(self) -> bool:
        self.calls += 1
        return bool(self.gw.catalog.settings.log_bodies)


async def test_a_layer_that_names_its_setting_is_read_from_each_new_settings_object(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = Switched(gw)
    monkeypatch.setattr(gw.cache, "layers", [layer])
    asks = [[{"role": "user", "content": f"question {n}"}] for n in range(4)]
    for messages in asks[:2]:  # off: the built-in path, no layer asked, no key for one
        assert (await chat(gw, messages=messages)).headers["X-OmniRoute-Cache"] == "MISS"
    assert layer.calls == 0 and layer.asked == []
    await gw.set_settings(log_bodies=True)  # a new settings object: read again, on
    for messages in asks[2:]:
        assert (await chat(gw, messages=messages)).headers["X-OmniRoute-Cache"] == "MISS"
    assert [k.prompt for k in layer.asked] == ["question 2", "question 3"]  # full keys
    await gw.set_settings(log_bodies=False)
    asked, calls = len(layer.asked), layer.calls
    assert (await chat(gw, messages=asks[0])).headers["X-OmniRoute-Cache"] == "HIT"
    assert len(layer.asked) == asked  # off again: a hit in memory, no layer asked
    layer.on = False  # (Toggled's own flag: this one's activity is its setting's alone)
    await chat(gw, messages=[{"role": "user", "content": "question 9"}])
    assert layer.calls == calls and len(layer.asked) == asked


async def test_a_layer_that_names_no_setting_is_asked_on_every_request(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = Toggled()
    calls = 0

    def active() -> bool:
        nonlocal calls
        calls += 1
        return layer.on

    monkeypatch.setattr(layer, "active", active)
    monkeypatch.setattr(gw.cache, "layers", [layer])
    layer.on = False
    for n in range(3):
        await chat(gw, messages=[{"role": "user", "content": f"q{n}"}])
    assert calls == 3
    layer.on = True  # takes effect at once
    await chat(gw, messages=[{"role": "user", "content": "q9"}])
    assert layer.asked[-1].prompt == "q9"
