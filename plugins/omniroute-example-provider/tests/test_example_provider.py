"""Tests of the example provider plugin, with no change to omniroute's core.

Three levels, as a plugin author would write them:

1. the ``omniroute`` command line, run the way users run it, sees the plugin;
2. the provider class on its own (pure: no gateway, no network);
3. a real in-process gateway (the ``omniroute`` fixture that installing omniroute
   provides) called with the official ``openai`` and ``anthropic`` SDKs, and in the
   Responses, Gemini and Ollama wire formats: the provider speaks the canonical model,
   so each client API's own format encodes its answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import omniroute
import openai
import pytest
from omniroute import canonical as c

from omniroute_example_provider import ExampleProvider, register_providers

HELLO = [{"role": "user", "content": "Hello, brave new world"}]


# ----------------------------------------------------------------------------- the command line


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``omniroute ARGS`` in a fresh process, on a temporary data directory."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMNIROUTE_DISABLE_PLUGINS", "OMNIROUTE_PLUGINS", "OMNIROUTE_CONFIG")}
    environ.update(OMNIROUTE_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run([sys.executable, "-m", "omniroute.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def plugin_entry(tmp_path: Path, **env: str) -> dict[str, Any]:
    result = run_cli(tmp_path, "plugins", "--json", **env)
    assert result.returncode == 0, result.stderr
    entries = {p["name"]: p for p in json.loads(result.stdout)}
    assert "example-provider" in entries, sorted(entries)
    return entries["example-provider"]


def test_cli_lists_the_plugin(tmp_path):
    entry = plugin_entry(tmp_path)
    assert entry["distribution"] == "omniroute-example-provider"
    assert entry["version"] == "0.1.0"
    assert entry["module"] == "omniroute_example_provider"
    assert entry["hooks"] == ["register_providers"]
    assert entry["registered"] == {"providers": ["example"]}
    assert entry["error"] is None and entry["blocked"] is False


def test_cli_disable_plugins_blocks_it(tmp_path):
    entry = plugin_entry(tmp_path, OMNIROUTE_DISABLE_PLUGINS="example-provider")
    assert entry["blocked"] is True
    assert entry["registered"] == {}
    added = run_cli(tmp_path, "providers", "add", "--type", "example", "--no-key",
                    OMNIROUTE_DISABLE_PLUGINS="example-provider")
    assert added.returncode != 0
    assert "plugin 'example-provider' is blocked" in added.stderr


def test_cli_add_and_test_a_connection(tmp_path):
    added = run_cli(tmp_path, "providers", "add", "--type", "example", "--no-key")
    assert added.returncode == 0, added.stderr
    assert "(example) prefix example/" in added.stdout
    listed = run_cli(tmp_path, "providers", "list", "--json")
    (conn,) = json.loads(listed.stdout)
    assert (conn["type"], conn["prefix"], conn["credentials"]) == ("example", "example", {})
    tested = run_cli(tmp_path, "providers", "test", conn["id"])
    assert tested.returncode == 0, tested.stderr
    assert "ok in" in tested.stdout and "2 models" in tested.stdout


def test_cli_refuses_an_api_key(tmp_path):
    added = run_cli(tmp_path, "providers", "add", "--type", "example", "--api-key", "sk-x")
    assert added.returncode != 0
    assert "unknown credential field(s): api_key" in added.stderr


# ----------------------------------------------------------------------------- the class itself


def provider() -> ExampleProvider:
    # The example uses neither its connection nor its context, so stand-ins will do.
    connection = SimpleNamespace(id="conn_test", name="example", prefix="example",
                                 settings={}, credentials={})
    return ExampleProvider(connection, None)  # type: ignore[arg-type]


def request(model: str, *messages: c.Message, system: str | None = None) -> c.Request:
    """A canonical request, as the gateway hands it over (``model`` without its prefix)."""
    return c.Request(model=model, messages=list(messages) or [user("Hello, brave new world")],
                     system=[c.Text(system)] if system else [])


def user(*texts: str) -> c.Message:
    return c.Message("user", [c.Text(t) for t in texts])


async def events_of(req: c.Request) -> list[c.Event]:
    async with aclosing(provider().stream(req)) as events:
        return [event async for event in events]


def test_the_type_describes_itself():
    assert issubclass(ExampleProvider, omniroute.CanonicalProvider)
    assert ExampleProvider.type == "example"
    assert ExampleProvider.format == "canonical"
    assert ExampleProvider.default_prefix == "example"
    assert ExampleProvider.requires_credentials is False
    assert ExampleProvider.credential_fields == ()
    assert ExampleProvider.presets == {}


def test_configure_needs_nothing_and_refuses_credentials():
    assert ExampleProvider.configure({}, {}, None) == ({}, {})
    with pytest.raises(ValueError, match="unknown credential"):
        ExampleProvider.configure({}, {"api_key": "sk-x"}, None)


def test_the_plugin_registers_the_type():
    registered: list[type] = []
    register_providers(registered.append)
    assert registered == [ExampleProvider]


async def test_list_models_and_test():
    p = provider()
    assert await p.list_models() == ["echo", "reverse"]
    await p.test()
    await p.close()


async def test_echo_complete_is_collected_from_the_stream():
    response = await provider().complete(request("echo"))
    assert response.id.startswith("example-") and response.model == "echo"
    assert response.parts == [c.Text("Hello, brave new world")]
    assert response.stop_reason == "end_turn"
    assert response.usage == c.Usage(input_tokens=4, output_tokens=4)


async def test_reverse_uses_the_last_user_message_and_text_parts():
    req = request(
        "reverse", user("first question"), c.Message("assistant", [c.Text("an answer")]),
        c.Message("user", [c.Text("abc "), c.Image(media_type="image/png", data="AA=="),
                           c.Text("def")]),
        system="be brief")
    response = await provider().complete(req)
    assert response.parts == [c.Text("fed cba")]
    # the system prompt's and every message's words count as prompt tokens: 2 + 2 + 2 + 2
    assert response.usage == c.Usage(input_tokens=8, output_tokens=2)


async def test_no_user_message_gives_an_empty_answer():
    response = await provider().complete(request("echo", c.Message("assistant",
                                                                   [c.Text("x")])))
    assert response.parts == [c.Text("")]
    assert response.usage.output_tokens == 0


async def test_stream_events_word_by_word():
    start, *events = await events_of(request("echo"))
    assert isinstance(start, c.Start) and start.model == "echo"
    assert events == [
        c.PartStart(0, c.Text("")),
        c.TextDelta(0, "Hello, "), c.TextDelta(0, "brave "), c.TextDelta(0, "new "),
        c.TextDelta(0, "world"),
        c.PartStop(0),
        c.Finish("end_turn", c.Usage(input_tokens=4, output_tokens=4)),
    ]


async def test_a_stream_can_be_abandoned():
    async with aclosing(provider().stream(request("reverse"))) as events:
        first = await anext(events)
    assert isinstance(first, c.Start)


async def test_unknown_model_is_a_404_before_any_event():
    with pytest.raises(omniroute.UpstreamStatusError) as info:
        await anext(provider().stream(request("nope")))
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert "nope" in info.value.message
    with pytest.raises(omniroute.UpstreamStatusError):
        await provider().complete(request("nope"))


# ----------------------------------------------------------------------------- through the gateway


def sdk(gateway: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key="x", max_retries=0,
                              timeout=10)


@pytest.fixture
async def gateway(omniroute: Any) -> Any:
    """The gateway with one ``example`` connection (default prefix ``example/``)."""
    omniroute.connection = await omniroute.add_provider({"type": "example"})
    return omniroute


async def test_adding_a_connection(gateway):
    conn = gateway.connection
    assert (conn["type"], conn["prefix"], conn["name"]) == ("example", "example", "example")
    assert conn["usable"] is True and conn["error"] is None


async def test_models_are_listed(gateway):
    resp = await gateway.client.get("/v1/models")
    assert resp.status == 200
    ids = [m["id"] for m in (await resp.json())["data"]]
    assert "example/echo" in ids and "example/reverse" in ids
    async with sdk(gateway) as client:
        listed = [m.id async for m in client.models.list()]
    assert {"example/echo", "example/reverse"} <= set(listed)


@pytest.mark.parametrize(("model", "expected"), [("echo", "Hello, brave new world"),
                                                 ("reverse", "dlrow wen evarb ,olleH")])
async def test_sdk_plain_answer(gateway, model, expected):
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"example/{model}", messages=HELLO)
        answer = raw.parse()
    assert raw.headers["x-omniroute-provider"] == "example"
    assert raw.headers["x-omniroute-model"] == model
    assert answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 4
    assert answer.usage.completion_tokens == 4
    assert answer.usage.total_tokens == 8


@pytest.mark.parametrize(("model", "expected"), [("echo", "Hello, brave new world"),
                                                 ("reverse", "dlrow wen evarb ,olleH")])
async def test_sdk_streamed_answer(gateway, model, expected):
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model=f"example/{model}", messages=HELLO, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_sdk_stream_with_usage(gateway):
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="example/echo", messages=HELLO, stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello, brave new world"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 4, 8)


async def test_sdk_content_parts(gateway):
    parts = [{"role": "user", "content": [{"type": "text", "text": "ab"},
                                          {"type": "text", "text": "cd"}]}]
    async with sdk(gateway) as client:
        answer = await client.chat.completions.create(model="example/reverse", messages=parts)
    assert answer.choices[0].message.content == "dcba"


@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_unknown_model_is_not_found(gateway, stream):
    async with sdk(gateway) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="example/nope", messages=HELLO,
                                                 stream=stream)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert "nope" in info.value.message


async def test_a_connection_with_its_own_prefix(omniroute):
    await omniroute.add_provider({"type": "example", "prefix": "local", "name": "mine"})
    async with sdk(omniroute) as client:
        answer = await client.chat.completions.create(model="local/reverse", messages=HELLO)
    assert answer.choices[0].message.content == "dlrow wen evarb ,olleH"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_request_log_records_usage(gateway, stream):
    async with sdk(gateway) as client:
        answer = await client.chat.completions.create(model="example/echo", messages=HELLO,
                                                      stream=stream)
        if stream:  # usage is logged even when the client did not ask for it
            [chunk async for chunk in answer]
    resp = await gateway.client.get("/api/requests", headers=gateway.admin_headers)
    (record,) = (await resp.json())["requests"]
    assert (record["provider"], record["model"], record["status"]) == ("example", "echo", 200)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (4, 4)
    assert record["stream"] == stream


# ----------------------------------------------------------------------------- other client APIs
# The provider speaks the canonical model, so each client API's own format encodes its answer.


def claude(gateway: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key="x", max_retries=0,
                                    timeout=10)


async def test_anthropic_messages(gateway):
    async with claude(gateway) as client:
        message = await client.messages.create(
            model="example/reverse", max_tokens=100, system="be brief", messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert [block.text for block in message.content] == ["dlrow wen evarb ,olleH"]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 4)


async def test_anthropic_messages_stream(gateway):
    async with claude(gateway) as client, client.messages.stream(
            model="example/echo", max_tokens=100, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert pieces == ["Hello, ", "brave ", "new ", "world"]
    assert message.content[0].text == "Hello, brave new world"
    assert message.usage.output_tokens == 4


async def test_anthropic_unknown_model_is_not_found(gateway):
    async with claude(gateway) as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(model="example/nope", max_tokens=10, messages=HELLO)
    assert "nope" in info.value.message


async def test_responses_api(gateway):
    async with sdk(gateway) as client:
        answer = await client.responses.create(model="example/reverse", input="ab cd")
    assert answer.output_text == "dc ba"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (2, 2)


async def test_gemini_and_ollama_wire_formats(gateway):
    resp = await gateway.client.post(
        "/v1beta/models/example/echo:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["candidates"][0]["content"]["parts"] == [{"text": "Hello there"}]
    resp = await gateway.client.post("/api/chat", json={
        "model": "example/reverse", "stream": False,
        "messages": [{"role": "user", "content": "Hello there"}]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["message"]["content"] == "ereht olleH"
