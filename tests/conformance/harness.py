"""One cell of the matrix: a running gateway, one fake upstream behind one connection.

Client modules (``clients/*.py``) get a :class:`Cell` and use it to script the
fake, to name the model, and for the checks every client shares: what the
upstream received (:meth:`Cell.check_tool_turns`, :meth:`Cell.check_images`,
:meth:`Cell.check_reasoning_back`) and what the request log recorded
(:meth:`Cell.check_logged`).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from conformance.upstreams import INPUT_TOKENS, OUTPUT_TOKENS, PNG, Upstream

#: the tool every round trip uses, and the exact arguments the model calls it with
TOOL_NAME = "get_weather"
TOOL_DESCRIPTION = "Get the current weather for a city"
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"location": {"type": "string", "description": "City name"},
                   "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["location"],
}
TOOL_ARGS: dict[str, Any] = {"location": "Paris", "unit": "c"}
TOOL_RESULT = "18C and sunny"
QUESTION = "What is the weather in Paris?"
ANSWER = "It is 18C and sunny in Paris."
ECHO = "Hello! You said: hi there"  # every fake's default answer to "hi there"
REASONING = "The user wants a short greeting."
IMAGE_PROMPT = "What is in this image?"


@dataclass
class Cell:
    gw: Any  # omniroute.testing.GatewayHarness
    up: Upstream
    fake: Any
    client: str
    sent: list[Any] = field(default_factory=list)  # the fake's answers (spy)

    @property
    def base_url(self) -> str:
        return self.gw.base_url

    @property
    def model(self) -> str:
        return f"{self.up.prefix}/{self.up.model}"

    @property
    def reasoning_model(self) -> str:
        return f"{self.up.prefix}/{self.up.reasoning_model}"

    def script(self, *behaviours: Any) -> None:
        self.fake.script.extend(behaviours)

    def bodies(self) -> list[dict[str, Any]]:
        return self.up.bodies(self.fake)

    def last(self) -> dict[str, Any]:
        return self.bodies()[-1]

    def reset(self) -> None:
        """Forget failures (cooldowns, breakers) so the next request is served again."""
        self.gw.resilience.reset()

    # ------------------------------------------------------------------ shared checks

    async def check_logged(self, *, status: int = 200, stream: bool | None = None,
                           usage: bool = True) -> dict[str, Any]:
        """The newest request-log record: status, and the shared usage numbers."""
        log = self.gw.log
        record: dict[str, Any] = {}
        for _ in range(50):  # the record is written when the handler returns
            await log.flush()
            resp = await self.gw.client.get("/api/requests?limit=1",
                                            headers=self.gw.admin_headers)
            rows = (await resp.json())["requests"]
            if rows and rows[0]["status"] == status:
                record = rows[0]
                break
            await asyncio.sleep(0.02)
        assert record, f"no request with status {status} in the request log"
        assert record["provider"] == self.up.prefix
        if stream is not None:
            assert bool(record["stream"]) is stream
        if usage:
            assert (record["prompt_tokens"], record["completion_tokens"]) == (
                INPUT_TOKENS, OUTPUT_TOKENS), record
        return record

    def check_tool_turns(self, client_call_id: str | None, *, carries_opaque: bool) -> None:
        """The second request carries the call and its result, matched, in the provider's shape.

        :param client_call_id: the id the client saw on the call (None: its format has none).
        :param carries_opaque: the client format can hand back opaque reasoning (Gemini
            thought signatures ride on it).
        """
        bodies = self.bodies()
        assert len(bodies) == 2, f"expected two upstream requests, got {len(bodies)}"
        for body in bodies:  # the tool definition arrives whole, in the provider's shape
            assert self.up.tools(body) == [(TOOL_NAME, TOOL_DESCRIPTION, TOOL_SCHEMA)]
        turns = self.up.tool_turns(bodies[1])
        assert (turns.name, turns.args, turns.result_text) == (TOOL_NAME, TOOL_ARGS,
                                                               TOOL_RESULT), turns
        assert turns.call_id == turns.result_id, f"call and result ids differ: {turns}"
        issued_id, issued_opaque = self.up.issued(self.sent[0])
        if issued_id is not None and client_call_id is not None:  # ids never change
            assert client_call_id == issued_id
            assert turns.call_id == issued_id
        elif client_call_id is not None and turns.call_id is not None:
            assert turns.call_id == client_call_id
        if self.up.name == "gemini":  # the call's thought signature comes back with it
            call = next(p for c in bodies[1]["contents"] for p in c["parts"]
                        if "functionCall" in p)
            expected = issued_opaque if carries_opaque else None
            assert same_bytes(call.get("thoughtSignature"), expected), (call, expected)

    def check_images(self, expected: list[tuple[str, str | None, str]]) -> None:
        got = self.up.images(self.last())
        if self.up.name == "ollama":  # bare base64, no media type
            expected = [(kind, None, value) for kind, _, value in expected]
        assert got == expected

    def check_reasoning_back(self, *, carries_opaque: bool, texts: list[str] | None = None,
                             asked: bool = True) -> None:
        """Turn two: the upstream got its own opaque reasoning back unchanged, or none.

        :param asked: the first request must ask the upstream to think.
        """
        bodies = self.bodies()
        assert len(bodies) == 2
        if asked:
            assert self.up.thinking_asked(bodies[0]), "the first request asks for thinking"
        _, issued = self.up.issued(self.sent[0])
        back, opaque = self.up.reasoning_back(bodies[1])
        if issued is not None and carries_opaque:
            assert len(opaque) == 1 and same_bytes(opaque[0], issued), (
                "the upstream's opaque reasoning came back unchanged")
        else:
            assert opaque == [], f"no foreign or made-up opaque values go upstream: {opaque}"
        if self.up.name == "anthropic" and not opaque:
            assert back == [], "unsigned thinking is never sent to Anthropic"
        if texts is not None:
            assert back == texts


def png_bytes() -> bytes:
    return base64.b64decode(PNG)


def same_bytes(a: str | None, b: str | None) -> bool:
    """Equal opaque values; Gemini's may come back in the URL-safe base64 alphabet."""
    if a is None or b is None or a == b:
        return a == b
    try:
        return base64.urlsafe_b64decode(a.replace("+", "-").replace("/", "_")) == \
            base64.urlsafe_b64decode(b.replace("+", "-").replace("/", "_"))
    except ValueError:
        return False
