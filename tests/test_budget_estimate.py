"""The budget stage's estimate of a request: the body size and the output cap."""

from __future__ import annotations

import pytest
from budget_support import MemoryStore, clock_at

from omniroute.auth.base import Principal
from omniroute.budgets import Budgets, Limits
from omniroute.budgets.stage import BudgetRun, BudgetStage, output_cap
from omniroute.config import Settings
from omniroute.pipeline.context import RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.storage import RequestRecord


class _Undecodable:
    """A client format the estimate must not use: decoding for an estimate costs too much."""

    name = "openai"

    def decode_request(self, request: object) -> object:
        raise AssertionError("the budget estimate decoded the request")


class _Images(Operation):
    """An operation that generates output and is not named "chat"."""

    name, capability, generates = "images", "images", True


class _Embed(Operation):
    name, capability = "embed", "embeddings"


def _estimate(operation_type: type[Operation], body: dict, body_bytes: int) -> tuple[int, int]:
    fmt = _Undecodable()
    operation = operation_type(fmt, "x")  # type: ignore[arg-type]
    stage = BudgetStage(Budgets(MemoryStore(), clock_at("2025-03-10T12:00:00")),
                        settings=Settings, prices=None)  # type: ignore[arg-type]
    limits = Limits.parse({"daily_usd": 1})
    run = BudgetRun(stage, limits, "k", operation)  # type: ignore[arg-type]
    ctx = RequestContext(Principal("api_key", "k", limits=limits), fmt,  # type: ignore[arg-type]
                         RequestRecord("r", 0.0, "x"), {}, {})
    ctx.body, ctx.body_bytes = body, body_bytes
    return run.estimate(ctx)


def test_the_estimate_reads_the_body_size_and_the_output_cap() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 1000}]}
    assert _estimate(_Images, {**body, "max_tokens": 50}, 401) == (101, 50)  # 401 / 4, up
    assert _estimate(_Images, body, 400) == (100, Settings().budget_output_tokens)
    assert _estimate(_Embed, {**body, "max_tokens": 50}, 40) == (10, 0)  # nothing generated


@pytest.mark.parametrize("body, cap", [
    ({"max_completion_tokens": 7, "max_tokens": 9}, 7),  # OpenAI chat
    ({"max_tokens": 9}, 9),  # Anthropic, older OpenAI
    ({"max_output_tokens": 11}, 11),  # Responses
    ({"generationConfig": {"maxOutputTokens": 12}}, 12),  # Gemini
    ({"generation_config": {"max_output_tokens": 13}}, 13),
    ({"options": {"num_predict": 14}}, 14),  # Ollama
    ({"options": {"num_predict": -1}}, None),  # Ollama's "no limit"
    ({"max_tokens": "lots", "generationConfig": []}, None),
    ({}, None),
])
def test_the_output_cap_of_each_client_format(body: dict, cap: int | None) -> None:
    assert output_cap(body) == cap
