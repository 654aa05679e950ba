"""A local token estimate, for when no upstream can count tokens for us.

Real tokenizers are byte-pair encoders with vocabularies of 100-200 K pieces;
shipping one would add megabytes and still be wrong for every other model
family. This estimator splits text the way BPE pre-tokenizers do (words,
numbers, punctuation runs, newlines) and prices each piece by its length,
with constants fitted against OpenAI's ``o200k_base`` on English prose and
Python code. ``tests/test_tokens.py`` keeps it within 15 % of that tokenizer
on both (measured: about 3 % over whole documents, 8 % on the worst file).

Pure Python, no table to load, about 1 µs per word.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from omniroute.formats import canonical as c

_PIECES = re.compile(r"[A-Za-z_]+|[0-9]+|[^\sA-Za-z0-9_]+|\n+|[ \t]+")

#: an image's cost when its size is unknown (Anthropic: about width*height/750, capped near 1600)
IMAGE_TOKENS = 1600
#: a document's cost when its content is not text we can see
FILE_TOKENS = 1500
#: framing per message (role markers) and per tool definition
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 8


def estimate_text(text: str) -> int:
    """Estimated tokens in ``text``."""
    n = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii() and (first.isalpha() or first == "_"):
            size = len(piece)
            n += 1 if size <= 9 else 2 if size <= 20 else (size + 4) // 5
        elif first.isdigit():
            n += (len(piece) + 2) // 3
        elif first == "\n":
            n += 1
        elif first in " \t":
            continue  # spaces merge into the next piece
        elif piece.isascii():
            n += (len(piece) + 5) // 6
        else:  # accented letters, CJK, emoji: about one token per character
            n += len(piece)
    return n


def estimate_request(request: c.Request) -> int:
    """Estimated input tokens of a canonical request (system, messages, tools)."""
    n = sum(estimate_text(t.text) for t in request.system)
    for message in request.messages:
        n += MESSAGE_OVERHEAD + sum(_part(p) for p in message.parts)
    for tool in request.tools:
        n += TOOL_OVERHEAD + estimate_text(tool.name) + estimate_text(tool.description or "")
        if tool.parameters:
            n += estimate_text(orjson.dumps(tool.parameters).decode())
    return n


def _part(part: Any) -> int:
    if isinstance(part, c.Text):
        return estimate_text(part.text)
    if isinstance(part, c.Image):
        return IMAGE_TOKENS
    if isinstance(part, c.File):
        return FILE_TOKENS
    if isinstance(part, c.Reasoning):
        return estimate_text(part.text)
    if isinstance(part, c.ToolCall):
        return estimate_text(part.name) + estimate_text(part.arguments)
    if isinstance(part, c.ToolResult):
        return 2 + sum(_part(p) for p in part.content)
    return 0
