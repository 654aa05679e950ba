"""A model's price as a few floats: what a request's cost is computed from.

:func:`from_model_price` reads a price out of ``genai-prices`` (the source of
truth) by asking it to price a handful of probe usages. Within one tier band
its prices are linear in the token counts, so the probes give exact
coefficients: the cost of a request, input tokens (total, cache reads and
writes included, as the canonical :class:`~omniroute.formats.canonical.Usage`
counts them), output tokens (reasoning included), cache reads and cache writes.
Pricing one request is then four multiplications, where ``genai_prices.calc_price``
costs about 100 µs of ``Decimal`` arithmetic: too much for every request.
``tests/test_pricing.py`` checks the two agree across the whole database.

Tiers follow genai-prices' rule: once the request's input tokens pass a tier's
start, that tier's price applies to every token of the request.

Audio is priced by its own units beside the tokens: seconds of audio transcribed
(genai-prices' ``audio_hours``, whisper-1 and the like) and characters of text
spoken (``input_mchars``, tts-1), read out the same way (one probe each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Band:
    """Prices (USD per token) that apply while input tokens exceed ``above``."""

    above: int
    per_request: float
    input: float
    output: float
    #: what a cache read / write costs *instead of* an input token (usually negative /
    #: positive): the input price is already counted for every input token
    cache_read_delta: float
    cache_write_delta: float
    #: what an image output token costs *instead of* an output token (genai-prices'
    #: ``output_image_mtok``; 0 where the model has none, its images priced as output)
    output_image_delta: float = 0.0


@dataclass(frozen=True, slots=True)
class Rate:
    """One model's prices, in bands by input tokens (the first band starts at 0)."""

    bands: tuple[Band, ...]
    #: where the price came from: ``genai-prices:<provider>/<model>`` or ``override:<scope>``
    source: str = ""
    #: USD per second of audio transcribed or translated
    per_second: float = 0.0
    #: USD per character of text turned into speech
    per_character: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int = 0,
             cache_write: int = 0, output_image: int = 0, *, seconds: float = 0.0,
             characters: int = 0) -> float:
        """USD for one request's tokens (``input_tokens`` includes cache reads and writes,
        ``output_tokens`` the ``output_image`` tokens of the images it made), seconds of
        audio and characters of speech.

        Never negative: an upstream that reports more cached tokens than input tokens
        is taken to have cached all of them.
        """
        if cache_read + cache_write > input_tokens:
            cache_read = min(cache_read, input_tokens)
            cache_write = input_tokens - cache_read
        band = self.bands[0]
        if len(self.bands) > 1:
            for candidate in reversed(self.bands):
                if input_tokens > candidate.above:
                    band = candidate
                    break
        cost = (band.per_request + band.input * input_tokens + band.output * output_tokens
                + band.cache_read_delta * cache_read + band.cache_write_delta * cache_write
                + band.output_image_delta * output_image)
        if seconds or characters:
            cost += self.per_second * seconds + self.per_character * characters
        return cost if cost > 0.0 else 0.0

    @property
    def free(self) -> bool:
        """Nothing costs anything (a price listed without numbers, or all zero)."""
        return not (self.per_second or self.per_character or any(
            b.per_request or b.input or b.output or b.output_image_delta for b in self.bands))

    @property
    def blended(self) -> float:
        """One number to sort by (USD per 1M tokens): three input tokens to one output."""
        band = self.bands[0]
        return (3 * band.input + band.output) / 4 * MTOK

    def per_million(self) -> dict[str, float]:
        """The base band as USD per 1M tokens (what the management API shows)."""
        band = self.bands[0]
        return {
            "input": band.input * MTOK,
            "output": band.output * MTOK,
            "cache_read": (band.input + band.cache_read_delta) * MTOK,
            "cache_write": (band.input + band.cache_write_delta) * MTOK,
        }


def flat(input: float, output: float, cache_read: float | None = None,
         cache_write: float | None = None, *, source: str = "", per_second: float = 0.0,
         per_character: float = 0.0) -> Rate:
    """A rate from USD per 1M tokens (cache reads and writes default to the input
    price), USD per second of audio and USD per character of speech."""
    per_in = input / MTOK
    read = per_in if cache_read is None else cache_read / MTOK
    write = per_in if cache_write is None else cache_write / MTOK
    return Rate((Band(0, 0.0, per_in, output / MTOK, read - per_in, write - per_in),),
                source=source, per_second=per_second, per_character=per_character)


def from_model_price(model_price: Any, *, source: str = "") -> Rate | None:
    """Read a ``genai_prices.types.ModelPrice`` into a :class:`Rate` by probing it.

    None when the price has nothing a text or audio request pays for (an image-only
    model).
    """
    from decimal import Decimal

    from genai_prices import Usage

    def unit_price(**usage: int) -> float:
        """USD per unit of one non-token usage (probed with many units, for precision)."""
        count = next(iter(usage.values()))
        nothing = Decimal(model_price.calc_price(Usage())["total_price"])
        return float((Decimal(model_price.calc_price(Usage(**usage))["total_price"]) - nothing)
                     / count)

    def price(inp: int, out: int = 0, read: int = 0, write: int = 0, image: int = 0) -> Decimal:
        usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                      cache_write_tokens=write, output_image_tokens=image)
        return Decimal(model_price.calc_price(usage)["total_price"])

    starts = sorted({tier.start for value in vars(model_price).values()
                     if hasattr(value, "tiers") for tier in value.tiers})
    bands = []
    for i, above in enumerate([0, *starts]):
        upper = starts[i] if i < len(starts) else None
        x = above + 1  # a probe inside the band: input tokens above its start ...
        if upper is not None and x + 1 > upper:  # ... and room for one more
            continue
        base = price(x)
        per_input = price(x + 1) - base
        band = Band(
            above=above,
            per_request=float(base - per_input * x),
            input=float(per_input),
            output=float(price(x, out=1) - base),
            cache_read_delta=float(price(x, read=1) - base),
            cache_write_delta=float(price(x, write=1) - base),
            output_image_delta=float(price(x, out=1, image=1) - price(x, out=1)),
        )
        bands.append(band)
    per_second = unit_price(audio_seconds=3600)
    per_character = unit_price(input_characters=1_000_000)
    if not bands or not (any((b.per_request, b.input, b.output) for b in bands)
                         or per_second or per_character):
        return None
    return Rate(tuple(bands), source=source, per_second=per_second,
                per_character=per_character)
