"""Model prices for the ``cost-optimized`` strategy: USD per 1M tokens.

A small built-in table of well-known models (list prices; they change, so an
operator can override any of them, or add their own, with a dict). Lookups
try ``prefix/model`` and then ``model``, exactly and then by the longest
known name the model starts with (``gpt-4o-2024-08-06`` -> ``gpt-4o``). A
model with no price sorts after every priced one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input and output tokens."""

    input: float
    output: float

    @property
    def blended(self) -> float:
        """One number to sort by: three input tokens to one output token."""
        return (3 * self.input + self.output) / 4


BUILTIN: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    # Anthropic
    "claude-opus-4": Price(15.00, 75.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
    # Google
    "gemini-2.5-pro": Price(1.25, 10.00),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-2.0-flash": Price(0.10, 0.40),
    # others
    "deepseek-chat": Price(0.27, 1.10),
    "deepseek-reasoner": Price(0.55, 2.19),
}


def _price(value: Any) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        return Price(float(value["input"]), float(value["output"]))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Price(float(value[0]), float(value[1]))
    raise ValueError(f"a price is (input, output) or {{'input', 'output'}}, got {value!r}")


class Pricing:
    """The built-in table with ``overrides`` on top (values: ``Price``, pair or dict)."""

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, builtin: bool = True) -> None:
        self.table: dict[str, Price] = dict(BUILTIN) if builtin else {}
        self.table.update({name: _price(v) for name, v in (overrides or {}).items()})
        self._by_length = sorted(self.table, key=len, reverse=True)

    def price(self, model: str, prefix: str | None = None) -> Price | None:
        """The price of ``model`` (as its upstream knows it), or ``None`` when unknown."""
        names = ([f"{prefix}/{model}"] if prefix else []) + [model]
        for name in names:
            if name in self.table:
                return self.table[name]
        for name in names:
            for known in self._by_length:
                if name.startswith(known) and name[len(known):len(known) + 1] in ("-", "@", ":"):
                    return self.table[known]
        return None
