"""The provider side of the matrix: one entry per provider type, over its fake.

Each :class:`Upstream` knows how to start its fake, how to connect the gateway
to it, how to script the fake's next answer in one shared vocabulary
(:meth:`say`, :meth:`call`, :meth:`think`, :meth:`fail`, :meth:`break_stream`)
and how to read the requests that reached the fake *in the provider's own
shape* (:meth:`tool_turns`, :meth:`images`, :meth:`reasoning_back`), so the
client modules can assert on the upstream side without knowing the provider.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fakes import (
    anthropic_upstream,
    gemini_upstream,
    ollama_upstream,
    openai_upstream,
    responses_upstream,
)

from omniroute.formats.gemini.request import camel_body
from omniroute.formats.gemini.schema import to_json_schema
from omniroute.formats.media import parse_data_url

#: the usage every scripted answer reports: what the client and the request log must show
INPUT_TOKENS, OUTPUT_TOKENS = 11, 7


@dataclass(frozen=True)
class ToolTurns:
    """The tool call and its result as the second upstream request carries them."""

    call_id: str | None
    name: str
    args: dict[str, Any]
    result_id: str | None
    result_text: str


@dataclass(frozen=True)
class Upstream:
    """One provider type in the matrix (see the module doc)."""

    name: str  # the test-id word: openai, anthropic, gemini, responses, ollama
    type: str  # the provider type of the connection
    prefix: str
    model: str  # the upstream model of every cell
    reasoning_model: str  # the one used when the client asks for thinking
    module: ModuleType  # the fake's module (reply, error, mid_stream_error)
    make: Callable[[], Any]  # a new fake
    mount: str  # the path the connection's base URL ends in
    key: str
    #: the provider can take an image by URL
    image_url: bool
    #: the opaque reasoning value the upstream issues and wants back (signature…)
    opaque: str | None

    def spec(self, base_url: str) -> dict[str, Any]:
        spec = {"type": self.type, "name": f"fake-{self.name}", "prefix": self.prefix,
                "base_url": base_url + self.mount}
        if self.key:
            spec["api_key"] = self.key
        return spec

    def spy(self, fake: Any) -> list[Any]:
        """Record what the fake answers each request with (ids, signatures it made up)."""
        sent: list[Any] = []
        name = _PLANNER[self.name]
        original = getattr(fake, name)

        def recording(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            sent.append(out)
            return out

        setattr(fake, name, recording)
        return sent

    def issued(self, answer: Any) -> tuple[str | None, str | None]:
        """``(tool call id, opaque reasoning value)`` the fake made up for one answer."""
        return _ISSUED[self.name](answer)

    # ------------------------------------------------------------------ scripting

    def say(self, text: str | None) -> Any:
        """An answer with ``text`` (None: the fake's echo of the prompt) and the shared usage."""
        return self.module.reply(text=text, chunks=3, usage=_USAGE[self.name])

    def call(self, name: str, args: dict[str, Any]) -> Any:
        """An answer that calls ``name`` with exactly ``args``."""
        return self.module.reply(tool_calls=[{"name": name, "arguments": args}],
                                 usage=_USAGE[self.name])

    def think(self, reasoning: str, text: str) -> Any:
        """An answer with reasoning (signed / encrypted where the provider does that)."""
        key = {"anthropic": "thinking", "gemini": "thinking", "ollama": "thinking",
               "responses": "reasoning", "openai": "reasoning"}[self.name]
        return self.module.reply(text=text, chunks=3, usage=_USAGE[self.name],
                                 **{key: reasoning})

    def fail(self, status: int) -> Any:
        return self.module.error(status, f"Fake upstream error {status}")

    def break_stream(self) -> Any:
        """A stream that breaks with the provider's own error event after a few frames."""
        return self.module.mid_stream_error(3)

    # ------------------------------------------------------------------ reading

    def bodies(self, fake: Any) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests that reached the fake, in order."""
        return [r.json for r in fake.requests
                if r.method == "POST" and not r.path.endswith("count_tokens")]

    def shaped(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with Gemini's snake_case spellings (the API takes both) in camelCase."""
        return camel_body(body) if self.name == "gemini" else body

    def tool_turns(self, body: dict[str, Any]) -> ToolTurns:
        return _TOOL_TURNS[self.name](self.shaped(body))

    def tools(self, body: dict[str, Any]) -> list[tuple[str, str | None, Any]]:
        """Function tools as ``(name, description, JSON Schema)``."""
        return _TOOLS[self.name](self.shaped(body))

    def images(self, body: dict[str, Any]) -> list[tuple[str, str | None, str]]:
        """Images of the last user turn: ``("data", media type, base64)`` / ``("url", None, url)``."""
        return _IMAGES[self.name](self.shaped(body))

    def reasoning_back(self, body: dict[str, Any]) -> tuple[list[str], list[str]]:
        """``(texts, opaque values)`` of reasoning in the request's assistant turns."""
        return _REASONING[self.name](self.shaped(body))

    def thinking_asked(self, body: dict[str, Any]) -> bool:
        """The request asks the model to think, in the provider's own terms."""
        return _THINKING_ASKED[self.name](self.shaped(body))


_USAGE: dict[str, dict[str, int]] = {
    "openai": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS,
               "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS},
    "anthropic": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    "gemini": {"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": OUTPUT_TOKENS,
               "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS, "thoughtsTokenCount": 0},
    "responses": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                  "reasoning_tokens": 0},
    "ollama": {"prompt_eval_count": INPUT_TOKENS, "eval_count": OUTPUT_TOKENS},
}


# ---------------------------------------------------------------------------- tool turns


def _only(items: list[Any], what: str) -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {items!r}"
    return items[0]


def _openai_turns(body: dict[str, Any]) -> ToolTurns:
    messages = body["messages"]
    calls = [tc for m in messages if m["role"] == "assistant" for tc in m.get("tool_calls") or []]
    call = _only(calls, "tool call")
    result = _only([m for m in messages if m["role"] == "tool"], "tool message")
    content = result["content"]
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return ToolTurns(call["id"], call["function"]["name"],
                     json.loads(call["function"]["arguments"]), result["tool_call_id"], text)


def _anthropic_turns(body: dict[str, Any]) -> ToolTurns:
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    call = _only([b for b in blocks if b["type"] == "tool_use"], "tool_use block")
    result = _only([b for b in blocks if b["type"] == "tool_result"], "tool_result block")
    content = result.get("content", "")
    text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    return ToolTurns(call["id"], call["name"], call["input"], result["tool_use_id"], text)


def _gemini_turns(body: dict[str, Any]) -> ToolTurns:
    parts = [p for c in body["contents"] for p in c["parts"]]
    call = _only([p["functionCall"] for p in parts if "functionCall" in p], "functionCall")
    result = _only([p["functionResponse"] for p in parts if "functionResponse" in p],
                   "functionResponse")
    response = result["response"]
    text = response.get("output") if isinstance(response.get("output"), str) else json.dumps(
        response)
    assert result["name"] == call["name"], "a functionResponse names the function it answers"
    return ToolTurns(call.get("id"), call["name"], call.get("args") or {}, result.get("id"),
                     text)


def _responses_turns(body: dict[str, Any]) -> ToolTurns:
    items = body["input"]
    call = _only([i for i in items if i.get("type") == "function_call"], "function_call item")
    result = _only([i for i in items if i.get("type") == "function_call_output"],
                   "function_call_output item")
    output = result["output"]
    text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
    return ToolTurns(call["call_id"], call["name"], json.loads(call["arguments"]),
                     result["call_id"], text)


def _ollama_turns(body: dict[str, Any]) -> ToolTurns:
    messages = body["messages"]
    calls = [tc for m in messages if m["role"] == "assistant" for tc in m.get("tool_calls") or []]
    call = _only(calls, "tool call")
    result = _only([m for m in messages if m["role"] == "tool"], "tool message")
    assert result.get("tool_name") == call["function"]["name"], "tool results name their tool"
    return ToolTurns(call.get("id"), call["function"]["name"], call["function"]["arguments"],
                     result.get("tool_call_id"), result["content"])


_TOOL_TURNS = {"openai": _openai_turns, "anthropic": _anthropic_turns, "gemini": _gemini_turns,
               "responses": _responses_turns, "ollama": _ollama_turns}


# ---------------------------------------------------------------------------- tools


def _gemini_tools(body: dict[str, Any]) -> list[tuple[str, str | None, Any]]:
    out = []
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or []:
            schema = decl.get("parametersJsonSchema")
            if schema is None and decl.get("parameters") is not None:
                schema = to_json_schema(decl["parameters"])
            out.append((decl["name"], decl.get("description"), schema))
    return out


_TOOLS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str | None, Any]]]] = {
    "openai": lambda b: [(t["function"]["name"], t["function"].get("description"),
                          t["function"].get("parameters")) for t in b.get("tools") or []],
    "anthropic": lambda b: [(t["name"], t.get("description"), t.get("input_schema"))
                            for t in b.get("tools") or []],
    "gemini": _gemini_tools,
    "responses": lambda b: [(t["name"], t.get("description"), t.get("parameters"))
                            for t in b.get("tools") or [] if t.get("type") == "function"],
    "ollama": lambda b: [(t["function"]["name"], t["function"].get("description"),
                          t["function"].get("parameters")) for t in b.get("tools") or []],
}


# ---------------------------------------------------------------------------- images

Image = tuple[str, str | None, str]


def _from_url(url: str) -> Image:
    parsed = parse_data_url(url)
    return ("data", parsed[0], parsed[1]) if parsed else ("url", None, url)


def _last(items: list[dict[str, Any]], role: str, key: str = "role") -> dict[str, Any]:
    return [m for m in items if m.get(key) == role][-1]


def _openai_images(body: dict[str, Any]) -> list[Image]:
    content = _last(body["messages"], "user")["content"]
    return [_from_url(p["image_url"]["url"]) for p in content if isinstance(content, list)
            and p["type"] == "image_url"]


def _anthropic_images(body: dict[str, Any]) -> list[Image]:
    content = _last(body["messages"], "user")["content"]
    out: list[Image] = []
    for block in content if isinstance(content, list) else []:
        if block["type"] == "image":
            src = block["source"]
            out.append(("data", src["media_type"], src["data"]) if src["type"] == "base64"
                       else ("url", None, src["url"]))
    return out


def _gemini_images(body: dict[str, Any]) -> list[Image]:
    parts = _last(body["contents"], "user")["parts"]
    out: list[Image] = []
    for part in parts:
        if "inlineData" in part:
            out.append(("data", part["inlineData"]["mimeType"], part["inlineData"]["data"]))
        elif "fileData" in part:
            out.append(("url", None, part["fileData"]["fileUri"]))
    return out


def _responses_images(body: dict[str, Any]) -> list[Image]:
    item = _last([i for i in body["input"] if i.get("type", "message") == "message"], "user")
    return [_from_url(p["image_url"]) for p in item["content"] if p["type"] == "input_image"]


def _ollama_images(body: dict[str, Any]) -> list[Image]:
    return [("data", None, img) for img in _last(body["messages"], "user").get("images") or []]


_IMAGES = {"openai": _openai_images, "anthropic": _anthropic_images, "gemini": _gemini_images,
           "responses": _responses_images, "ollama": _ollama_images}


# ---------------------------------------------------------------------------- reasoning


def _openai_reasoning(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts, opaque = [], []
    for m in body["messages"]:
        if m["role"] != "assistant":
            continue
        if m.get("reasoning_content"):
            texts.append(m["reasoning_content"])
        for d in m.get("reasoning_details") or []:
            texts.append(d.get("text") or "")
            opaque += [v for v in (d.get("signature"), d.get("data")) if v]
    return texts, opaque


def _anthropic_reasoning(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts, opaque = [], []
    for m in body["messages"]:
        if m["role"] != "assistant" or not isinstance(m["content"], list):
            continue
        for b in m["content"]:
            if b["type"] == "thinking":
                texts.append(b["thinking"])
                opaque.append(b["signature"])
            elif b["type"] == "redacted_thinking":
                opaque.append(b["data"])
    return texts, opaque


def _gemini_reasoning(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts, opaque = [], []
    for content in body["contents"]:
        if content.get("role") != "model":
            continue
        for part in content["parts"]:
            if part.get("thought"):
                texts.append(part.get("text") or "")
            if part.get("thoughtSignature"):
                opaque.append(part["thoughtSignature"])
    return texts, opaque


def _responses_reasoning(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts, opaque = [], []
    for item in body["input"]:
        if item.get("type") == "reasoning":
            texts += [s["text"] for s in item.get("summary") or []]
            if item.get("encrypted_content"):
                opaque.append(item["encrypted_content"])
    return texts, opaque


def _ollama_reasoning(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    return [m["thinking"] for m in body["messages"]
            if m["role"] == "assistant" and m.get("thinking")], []


_REASONING = {"openai": _openai_reasoning, "anthropic": _anthropic_reasoning,
              "gemini": _gemini_reasoning, "responses": _responses_reasoning,
              "ollama": _ollama_reasoning}

_THINKING_ASKED: dict[str, Callable[[dict[str, Any]], bool]] = {
    "openai": lambda b: b.get("reasoning_effort") not in (None, "none"),
    "anthropic": lambda b: (b.get("thinking") or {}).get("type") in ("enabled", "adaptive"),
    "gemini": lambda b: bool(((b.get("generationConfig") or {}).get("thinkingConfig") or {})
                             .get("includeThoughts")),
    "responses": lambda b: bool((b.get("reasoning") or {}).get("effort")
                                or (b.get("reasoning") or {}).get("summary")),
    "ollama": lambda b: bool(b.get("think")),
}


# ---------------------------------------------------------------------------- spies

#: the fake method that builds each answer (called once per request)
_PLANNER = {"openai": "_plan", "anthropic": "_blocks", "gemini": "_chunks",
            "responses": "_items", "ollama": "_lines"}


def _openai_issued(plan: Any) -> tuple[str | None, str | None]:
    _, calls = plan
    return (calls[0]["id"] if calls else None), None


def _anthropic_issued(blocks: Any) -> tuple[str | None, str | None]:
    call = next((b["id"] for b in blocks if b["type"] == "tool_use"), None)
    return call, next((b["signature"] for b in blocks if b["type"] == "thinking"), None)


def _gemini_issued(chunks: Any) -> tuple[str | None, str | None]:
    parts = [p for chunk in chunks for p in chunk["candidates"][0]["content"]["parts"]]
    return None, next((p["thoughtSignature"] for p in parts if "thoughtSignature" in p), None)


def _responses_issued(items: Any) -> tuple[str | None, str | None]:
    call = next((i["call_id"] for i in items if i["type"] == "function_call"), None)
    return call, next((i.get("encrypted_content") for i in items if i["type"] == "reasoning"),
                      None)


_ISSUED = {"openai": _openai_issued, "anthropic": _anthropic_issued, "gemini": _gemini_issued,
           "responses": _responses_issued, "ollama": lambda lines: (None, None)}


# ---------------------------------------------------------------------------- the registry

UPSTREAMS: dict[str, Upstream] = {u.name: u for u in (
    Upstream("openai", "openai", "oa", "gpt-4o-mini", "gpt-4o-mini", openai_upstream,
             lambda: openai_upstream.FakeOpenAI(api_key="sk-upstream-test"), "/v1",
             "sk-upstream-test", image_url=True, opaque=None),
    Upstream("anthropic", "anthropic", "an", "claude-sonnet-4-5", "claude-sonnet-4-5",
             anthropic_upstream,
             lambda: anthropic_upstream.FakeAnthropic(
                 models=["claude-sonnet-4-5", "claude-haiku-4-5"]),
             "", "sk-ant-upstream-test", image_url=True, opaque="signature"),
    Upstream("gemini", "gemini", "ge", "gemini-2.5-flash", "gemini-2.5-flash", gemini_upstream,
             gemini_upstream.FakeGemini, "", "AIza-upstream-test", image_url=True,
             opaque=None),
    Upstream("responses", "openai-responses", "rs", "gpt-5", "gpt-5", responses_upstream,
             lambda: responses_upstream.FakeResponses(
                 models=["gpt-5", "gpt-4.1-mini"], reasoning_models=["gpt-5"]),
             "/v1", "sk-upstream-test", image_url=True, opaque="encrypted_content"),
    Upstream("ollama", "ollama", "ol", "llama3.2", "qwen3:8b", ollama_upstream,
             ollama_upstream.FakeOllama, "", "", image_url=False, opaque=None),
)}

#: a 1x1 transparent PNG
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
IMAGE_URL = "https://example.com/cat.png"
