"""The request pipeline: stages around every operation, header safety, its import rules."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from omniroute.appkeys import PIPELINE
from omniroute.pipeline import Operation, Reply, RequestContext, Stage, StageRun

HI = [{"role": "user", "content": "hi there"}]


def sdk(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0,
                              timeout=10)


class Recorder(StageRun):
    """Sees everything a stage may see, and answers by itself for model ``up/canned``."""

    sees_frames = True

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    async def before(self, ctx: RequestContext) -> Reply | None:
        self.seen["before"] = (ctx.model, ctx.stream, ctx.principal.kind)
        if ctx.model == "up/canned":
            return Reply(body=b'{"canned": true}', status=203,
                         headers={"X-Test-Stage": "canned"})
        return None

    async def answer(self, ctx: RequestContext, body: bytes) -> None:
        self.seen["answer"] = body

    async def frame(self, ctx: RequestContext, chunk: bytes) -> None:
        self.seen.setdefault("frames", []).append(chunk)

    def finished(self, ctx: RequestContext) -> None:
        record = ctx.record
        self.seen["finished"] = (record.status, record.prompt_tokens, record.completion_tokens,
                                 record.latency_ms is not None)


class RecordingStage(Stage):
    name = "test-recorder"

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.operations: list[str] = []

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        self.operations.append(operation.name)
        return Recorder(self.seen)


@pytest.fixture
def stage(gw: Any) -> RecordingStage:
    stage = RecordingStage()
    gw.client.app[PIPELINE].stages.append(stage)
    return stage


async def test_a_stage_sees_the_json_answer_and_the_finished_record(gw: Any, stage) -> None:
    reply = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert reply.choices[0].message.content == "Hello! You said: hi there"
    assert stage.seen["before"] == ("up/gpt-4o-mini", False, "anonymous")
    assert b"Hello! You said: hi there" in stage.seen["answer"]
    status, prompt, completion, timed = stage.seen["finished"]
    assert status == 200 and prompt and completion and timed
    assert stage.operations == ["chat"]


async def test_a_stage_sees_every_streamed_chunk(gw: Any, stage) -> None:
    stream = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                   stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    frames = b"".join(stage.seen["frames"])
    assert text == "Hello! You said: hi there"
    assert frames.endswith(b"data: [DONE]\n\n") and frames.count(b"\"content\":") > 1
    assert stage.seen["finished"][0] == 200


async def test_a_stage_answers_without_any_target(gw: Any, stage) -> None:
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "up/canned", "messages": HI})
    assert resp.status == 203 and await resp.json() == {"canned": True}
    assert resp.headers["X-Test-Stage"] == "canned"
    assert resp.headers["X-OmniRoute-Request-Id"]
    assert "X-OmniRoute-Provider" not in resp.headers
    assert gw.fake.requests == []  # no upstream was asked
    assert "answer" not in stage.seen  # a stage's own reply is not a target's answer
    assert stage.seen["finished"][0] == 203
    await gw.log.flush()
    (row,) = await gw.log.recent(1)
    assert (row["status"], row["model_requested"], row["provider"]) == (203, "up/canned", None)


async def test_a_stage_that_fails_after_the_answer_does_not_break_it(gw: Any) -> None:
    class Broken(StageRun):
        def finished(self, ctx: RequestContext) -> None:
            raise RuntimeError("stage bug")

    class BrokenStage(Stage):
        name = "broken"

        def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
            return Broken()

    gw.client.app[PIPELINE].stages.append(BrokenStage())
    reply = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert reply.choices[0].message.content


async def test_a_failure_while_completing_the_record_still_logs_it_and_tells_the_stages(
        gw: Any, stage, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(record: Any, target: Any) -> None:
        if record.stream:  # a stream is priced once it ended, in the pipeline's finally
            raise RuntimeError("a pricing bug")

    monkeypatch.setattr(gw.gateway.prices, "charge", broken)
    stream = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                   stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert stage.seen["finished"][0] == 200  # every stage still heard of it (budgets: slots)
    await gw.log.flush()
    (row,) = await gw.log.recent(1)
    assert (row["status"], row["stream"], row["cost_usd"]) == (200, 1, None)
    assert gw.client.app[PIPELINE].in_flight == 0


async def test_embeddings_and_counts_pass_the_stages_too(gw: Any, stage) -> None:
    result = await sdk(gw).embeddings.create(model="up/text-embedding-3-small", input="abc")
    assert len(result.data) == 1
    resp = await gw.client.post("/v1/messages/count_tokens",
                                json={"model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 200 and resp.headers["X-OmniRoute-Token-Count"] == "estimate"
    assert stage.operations == ["embeddings", "count_tokens"]


# ----------------------------------------------------------------------------- header safety

BAD_MODELS = ["up/x\r\nX-Evil: 1", "up/x\nX-Evil: 1", "up/x\x00", "up/\x7f"]


@pytest.mark.parametrize("model", BAD_MODELS)
async def test_a_model_with_control_characters_is_a_400_in_openai_shape(gw: Any, model) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gw).chat.completions.create(model=model, messages=HI)
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "invalid_model"
    assert "X-Evil" not in caught.value.response.headers
    assert gw.fake.requests == []


async def test_a_model_with_control_characters_is_a_400_in_anthropic_shape(gw: Any) -> None:
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="up/x\r\nX-Evil: 1", max_tokens=10, messages=HI)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"


async def test_a_model_with_control_characters_in_a_gemini_url_is_refused(gw: Any) -> None:
    contents = {"contents": [{"parts": [{"text": "hi"}]}]}
    resp = await gw.client.post("/v1beta/models/up%2Fx%01%09:generateContent", json=contents)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    # a line break does not even match the route: a Gemini-shaped 404, never a dropped connection
    resp = await gw.client.post("/v1beta/models/up%2Fx%0D%0AX-Evil:%201:generateContent",
                                json=contents)
    assert resp.status == 404 and (await resp.json())["error"]["status"] == "NOT_FOUND"
    assert "X-Evil" not in resp.headers


async def test_a_bad_model_in_embeddings_and_counts_is_a_400(gw: Any) -> None:
    for path in ("/v1/embeddings", "/v1/messages/count_tokens", "/api/embed"):
        resp = await gw.client.post(path, json={"model": "up/x\r\nX-Evil: 1", "input": "a",
                                                "messages": HI})
        assert resp.status == 400, path
        assert "X-Evil" not in resp.headers


# ----------------------------------------------------------------------------- import rules


def test_the_data_path_imports_nothing_from_web() -> None:
    root = Path(__file__).parent.parent / "omniroute" / "pipeline"
    for module in root.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("omniroute.web"), (module.name, node.module)
                assert node.module != "omniroute.gateway", (module.name, node.module)


def test_a_run_acts_when_it_overrides_a_hook_the_pipeline_awaits_or_wraps() -> None:
    """``StageRun.acts``: a request whose runs all lack it skips the pipeline's loops over
    ``before``, ``routed``, ``call``/``stream`` and ``answer``."""
    class Counts(StageRun):
        def finished(self, ctx: RequestContext) -> None: ...

    class Before(Counts):
        async def before(self, ctx: RequestContext) -> Reply | None:
            return None

    class Routed(StageRun):
        async def routed(self, ctx: RequestContext) -> None: ...

    class Answer(StageRun):
        async def answer(self, ctx: RequestContext, body: bytes) -> None: ...

    class Wraps(StageRun):
        wraps = True

    class Inherits(Before):
        pass

    class Undone(Before):
        before = StageRun.before  # (the cache's miss run: its own before, taken back)

    assert not StageRun.acts and not Counts.acts and not Undone.acts
    assert Before.acts and Routed.acts and Answer.acts and Wraps.acts and Inherits.acts


def test_a_new_context_holds_each_fields_default() -> None:
    """RequestContext writes its own __init__ (cheaper than dataclass's): it sets every
    field to the default the field declares, and each request gets its own lists and body."""
    import dataclasses

    from omniroute.auth.base import ANONYMOUS
    from omniroute.storage import RequestRecord

    given: Any = (ANONYMOUS, object(), RequestRecord("r", 0.0, "chat"), {}, {})
    one, two = RequestContext(*given), RequestContext(*given)
    for f in dataclasses.fields(RequestContext):
        if f.default is not dataclasses.MISSING:
            assert getattr(one, f.name) == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert getattr(one, f.name) == f.default_factory(), f.name
            assert getattr(one, f.name) is not getattr(two, f.name), f.name
    named = RequestContext(*given, "m", True, "p", 1.5)
    assert (named.path_model, named.path_stream, named.prefix, named.started) == (
        "m", True, "p", 1.5)
