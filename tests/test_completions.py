"""Legacy ``POST /v1/completions`` served by chat models, with the openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fakes.anthropic_upstream import FakeAnthropic
from fakes.openai_upstream import reply

MODEL = "up/gpt-4o-mini"


def sdk(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client-anything",
                              max_retries=0, timeout=10)


def last_chat(gw: Any) -> dict[str, Any]:
    return [r.json for r in gw.fake.requests if r.path.endswith("/chat/completions")][-1]


async def test_a_completion(gw: Any) -> None:
    done = await sdk(gw).completions.create(model=MODEL, prompt="Say hi", temperature=0.2,
                                            stop=["\n\n"])
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.model == "gpt-4o-mini"
    (choice,) = done.choices
    assert (choice.text, choice.index, choice.finish_reason) == (
        "Hello! You said: Say hi", 0, "stop")
    assert choice.logprobs is None
    assert done.usage is not None and done.usage.total_tokens == (
        done.usage.prompt_tokens + done.usage.completion_tokens) > 0
    sent = last_chat(gw)
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}]
    assert sent["temperature"] == 0.2 and sent["stop"] == ["\n\n"]
    assert 16 in (sent.get("max_tokens"), sent.get("max_completion_tokens"))  # the API default


async def test_a_one_prompt_list_and_max_tokens(gw: Any) -> None:
    gw.fake.script.append(reply(text="cut", finish_reason="length"))
    done = await sdk(gw).completions.create(model=MODEL, prompt=["Tell a story"], max_tokens=5)
    assert done.choices[0].text == "cut" and done.choices[0].finish_reason == "length"
    sent = last_chat(gw)
    assert sent["messages"] == [{"role": "user", "content": "Tell a story"}]
    assert 5 in (sent.get("max_tokens"), sent.get("max_completion_tokens"))


async def test_a_streamed_completion(gw: Any) -> None:
    stream = await sdk(gw).completions.create(model=MODEL, prompt="stream please", stream=True,
                                              stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Hello! You said: stream please"
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) > 1  # really streamed
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_a_stream_without_usage_has_no_usage_chunk(gw: Any) -> None:
    stream = await sdk(gw).completions.create(model=MODEL, prompt="hi", stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    raw = await gw.client.post("/v1/completions",
                               json={"model": MODEL, "prompt": "hi", "stream": True})
    assert (await raw.text()).endswith("data: [DONE]\n\n")


async def test_another_upstream_format_serves_completions_too(gw: Any, aiohttp_server: Any
                                                              ) -> None:
    fake = FakeAnthropic(api_key="sk-ant-upstream-test")
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "anthropic", "name": "fake-anthropic", "prefix": "claude",
                           "base_url": str(server.make_url("")),
                           "api_key": "sk-ant-upstream-test"})
    done = await sdk(gw).completions.create(model="claude/claude-haiku-4-5", prompt="Bonjour")
    assert done.choices[0].text == "Hello! You said: Bonjour"
    assert fake.requests[-1].json["max_tokens"] == 16
    stream = await sdk(gw).completions.create(model="claude/claude-haiku-4-5", prompt="Salut",
                                              stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "Hello! You said: Salut"


@pytest.mark.parametrize(("extra", "param"), [
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "end"}, "suffix"),
    ({"prompt": "x", "logprobs": 2}, "logprobs"),
    ({"prompt": None}, "prompt"),
])
async def test_what_a_chat_model_cannot_do_is_refused(gw: Any, extra: dict[str, Any],
                                                     param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gw).completions.create(model=MODEL, **extra)
    assert caught.value.param == param
    assert gw.fake.requests == []


async def test_upstream_errors_keep_their_status(gw: Any) -> None:
    from fakes.openai_upstream import error

    gw.fake.script.append(error(400, "bad temperature", param="temperature"))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gw).completions.create(model=MODEL, prompt="x", temperature=9)
    assert "bad temperature" in caught.value.message
