"""The price book: what each target's tokens cost, and what a finished request cost.

Where a target's price comes from, first match wins:

1. an operator override (``price_overrides``, ``/api/pricing``) for its connection
   and model, then for its connection and every model (``*``), then for the model
   everywhere (matched on the upstream model, and on ``prefix/model``);
2. ``genai-prices``' database (offline, shipped with the package, read through the
   compact :class:`~omniroute.pricing.table.PriceTable`): the provider
   its connection's ``base_url`` belongs to (OpenRouter, Groq, DeepSeek ...), else
   the connection's ``price_provider`` setting, else its provider type's
   (:attr:`~omniroute.providers.base.Provider.price_provider`); a model that
   provider does not list is looked up by its name alone.

A provider type with ``priced = False`` (local servers such as Ollama) costs 0.

An image generation (``record.images`` set) is priced per image when an override
gives the model an ``image`` price (USD per image: DALL-E, Imagen, which
genai-prices does not price); otherwise by its tokens, as the upstream counted
them (``gpt-image-1``, the Gemini image models), its output tokens at the
model's image-output rate.
A subscription (``auth_kind = "oauth"``) connection costs 0 too, whether or not its
model's price is known; the list price of its tokens is recorded beside it
(``list_cost_usd``, None when no source knows the model) to show what it saved. A model
the subscription's own service lists without a price (Copilot's included models, in
genai-prices' ``github-copilot``) is looked up by its name alone for that: the list
price is what the tokens would cost at a paid price.

Lookups are done once per connection and model and kept (:meth:`PriceBook.forget`
clears them: the gateway does on every configuration change, every few hours
since genai-prices dates some prices, and after a price update), so pricing a
request is a dictionary hit and a few multiplications.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omniroute.pricing.rate import Rate, flat
from omniroute.pricing.table import PriceTable, bundled

if TYPE_CHECKING:
    from omniroute.routing import Target
    from omniroute.storage import RequestRecord


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's price, USD per 1M tokens, and for audio USD per second of audio
    and per character of speech. ``scope`` is a connection id, or ``""`` for every
    connection; ``model`` is a model name or ``*`` (every model of the scope)."""

    model: str
    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    scope: str = ""
    #: USD per image an image generation makes (None: priced by its tokens)
    image: float | None = None
    #: USD per second of audio transcribed, and per character of speech (None: 0)
    per_second: float | None = None
    per_character: float | None = None

    def rate(self) -> Rate:
        where = f"override:{self.scope or '*'}/{self.model}"
        return flat(self.input, self.output, self.cache_read, self.cache_write, source=where,
                    per_second=self.per_second or 0.0, per_character=self.per_character or 0.0)

    def public(self) -> dict[str, Any]:
        return {"connection": self.scope or None, "model": self.model, "input": self.input,
                "output": self.output, "cache_read": self.cache_read,
                "cache_write": self.cache_write, "image": self.image,
                "per_second": self.per_second, "per_character": self.per_character}


#: a looked-up price that was not found (kept, so a miss is not looked up again)
_MISSING = Rate((), source="")
#: looked-up (connection, model) pairs kept; a client chooses the model, so the memo is
#: bounded: past this many it starts over (the configured models are looked up again)
MAX_RATES = 4096


class PriceBook:
    """Prices for targets; one per gateway, shared by the pipeline and the strategies.

    :param table: genai-prices' prices (the gateway's is read from its data directory,
        :func:`~omniroute.pricing.table.load_table`); None: the bundled database's,
        built on the first lookup (:func:`~omniroute.pricing.table.bundled`).
    """

    def __init__(self, overrides: Iterable[Override] = (),
                 table: PriceTable | None = None) -> None:
        self._overrides: dict[tuple[str, str], Override] = {}
        self._rates: dict[tuple[str, str], Rate] = {}
        self._table = table
        self.replace(overrides)

    @property
    def table(self) -> PriceTable:
        """genai-prices' prices, as this book reads them."""
        if self._table is None:
            self._table = bundled()
        return self._table

    def use(self, table: PriceTable) -> None:
        """Read genai-prices' prices from ``table`` from now on (a price update)."""
        self._table = table
        self._rates.clear()

    # ------------------------------------------------------------------ the overrides

    def replace(self, overrides: Iterable[Override]) -> None:
        """Use these overrides from now on (the database's, after a change)."""
        self._overrides = {(o.scope, o.model): o for o in overrides}
        self._rates.clear()

    @property
    def overrides(self) -> list[Override]:
        return sorted(self._overrides.values(), key=lambda o: (o.scope, o.model))

    def forget(self) -> None:
        """Look every target up again (the configuration or the prices changed)."""
        self._rates.clear()

    # ------------------------------------------------------------------ lookups

    def rate(self, target: Target) -> Rate | None:
        """The price of ``target``'s tokens, or None when no source knows it."""
        key = (target.connection.id, target.model)
        rate = self._rates.get(key)
        if rate is None:
            if len(self._rates) >= MAX_RATES:
                self._rates.clear()
            rate = self._rates[key] = self._look_up(target) or _MISSING
        return None if rate is _MISSING else rate

    def _look_up(self, target: Target) -> Rate | None:
        override = self._override(target)
        if override is not None:
            return override.rate()
        conn, model = target.connection, target.model
        provider = target.provider
        if not getattr(provider, "priced", True):
            return flat(0.0, 0.0, source="free")
        settings = conn.settings or {}
        table = self.table
        rate = table.rate(model, settings.get("base_url"),
                          settings.get("price_provider") or provider.price_provider)
        if rate is not None and rate.free and provider.auth_kind == "oauth":
            return table.rate(model, None, None) or rate  # the paid price elsewhere
        return rate

    def _override(self, target: Target) -> Override | None:
        """The operator's price for ``target``, the most specific first."""
        conn, model = target.connection, target.model
        found = self._overrides
        for key in ((conn.id, model), (conn.id, f"{conn.prefix}/{model}"), (conn.id, "*"),
                    ("", f"{conn.prefix}/{model}"), ("", model)):
            if key in found:
                return found[key]
        return None

    def image_price(self, target: Target) -> float | None:
        """USD per image ``target`` makes, when an override says (None: priced by tokens);
        a local server's images cost 0."""
        override = self._override(target)
        if override is not None and override.image is not None:
            return override.image
        return 0.0 if not getattr(target.provider, "priced", True) else None

    def blended(self, target: Target) -> float | None:
        """USD per 1M tokens at three input tokens to one output (``cost-optimized``);
        a subscription costs nothing, as it is charged."""
        if target.provider.auth_kind == "oauth":
            return 0.0
        rate = self.rate(target)
        return None if rate is None else rate.blended

    # ------------------------------------------------------------------ requests

    def charge(self, record: RequestRecord, target: Target | None) -> None:
        """Set ``record.cost_usd`` (and ``list_cost_usd`` for a subscription) from its tokens,
        its seconds of audio and its characters of speech.

        Leaves the cost None when nothing answered, or (but for a subscription, which
        costs 0) when no usage is known or the price is not.
        """
        if target is None:
            return
        cost = self._cost(record, target)
        if target.provider.auth_kind == "oauth":  # a subscription: paid for already
            record.cost_usd, record.list_cost_usd = 0.0, cost
        elif cost is not None:
            record.cost_usd = cost

    def _cost(self, record: RequestRecord, target: Target) -> float | None:
        """What ``record``'s images, tokens, audio seconds or characters cost on
        ``target`` (None: not known)."""
        if record.images:  # an image generation: per image, where a price says
            per_image = self.image_price(target)
            if per_image is not None:
                return per_image * record.images
        if (record.prompt_tokens is None and record.completion_tokens is None
                and record.audio_seconds is None and record.characters is None):
            return None
        rate = self.rate(target)
        if rate is None:
            return None
        output = record.completion_tokens or 0
        return rate.cost(record.prompt_tokens or 0, output, record.cached_tokens or 0,
                         record.cache_write_tokens or 0, output if record.images else 0,
                         seconds=record.audio_seconds or 0.0,
                         characters=record.characters or 0)

    def estimate_usd(self, target: Target, input_tokens: int, output_tokens: int, *,
                     images: int = 0, seconds: float = 0.0,
                     characters: int = 0) -> float | None:
        """What a request of this size would cost on ``target`` (budget reservations);
        a subscription costs 0, an unknown price None. ``images``: an image generation
        of that many images (its output tokens are the images')."""
        if target.provider.auth_kind == "oauth":
            return 0.0
        if images:
            per_image = self.image_price(target)
            if per_image is not None:
                return per_image * images
        rate = self.rate(target)
        if rate is None:
            return None
        return rate.cost(input_tokens, output_tokens, output_image=output_tokens if images else 0,
                         seconds=seconds, characters=characters)
