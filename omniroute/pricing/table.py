"""genai-prices' database read once into a compact table, kept on disk beside the data.

genai-prices holds its database as pydantic-validated objects: importing it and
reading its snapshot costs about 15 MiB of resident memory and a second of CPU,
for the few models a gateway ever prices. So its data is read once into a
:class:`PriceTable` (each price a :class:`~omniroute.pricing.rate.Rate`, probed
out of genai-prices by :func:`~omniroute.pricing.rate.from_model_price`; the
model and provider matching rules as plain tuples) and written to
``<data dir>/genai-prices-<version>.json``. A start that finds the file for the
installed genai-prices reads it (tens of milliseconds) and imports neither
genai-prices nor pydantic::

    table = load_table(config.data_dir)     # the file, else built once and written
    table.rate("gpt-4o", "https://api.openai.com/v1", "openai")   # Rate | None
    PriceTable.from_snapshot(snapshot)      # from genai-prices' (fetched) snapshot

:meth:`PriceTable.rate` looks a model up exactly as genai-prices'
``DataSnapshot.find_provider`` / ``find_provider_model`` and
``ModelInfo.get_prices`` do (by API URL, then provider id, then the model name
alone; fallback providers one step deep; compact dated references; dated and
time-of-day prices chosen at the time of the lookup). ``tests/test_pricing_table.py``
checks both answer the same across the whole database.

``python -m omniroute.pricing DATA_DIR`` writes the file: ``serve`` runs it
in a child process on a first start, so the gateway itself never imports
genai-prices (unless the ``price_updates`` setting is on).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import zlib
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import orjson

from omniroute.pricing.rate import Band, Rate, from_model_price

log = logging.getLogger(__name__)

#: the file's layout; a file of another layout is built again
FORMAT = 1
#: the distribution whose database this is
DISTRIBUTION = "genai-prices"

#: a matching rule: ``(kind, text)`` for equals, starts_with, ends_with, contains and regex
#: (texts but the regex lower-cased), ``(kind, (rule, ...))`` for ``or`` and ``and``
Clause = tuple[str, Any]
#: when a price applies: ``("date", start)``, or ``("time", start, end)`` (naive UTC times of day)
Constraint = tuple[Any, ...]
#: one model: its id, its matching rule and its prices, each with the constraint that makes it
#: apply (None: always); the first price applies when no constraint holds (as genai-prices)
Model = tuple[str, Clause, tuple[tuple[Constraint | None, Rate | None], ...]]


class ProviderPrices:
    """One provider of the table (genai-prices' ``Provider``, what lookups need of it).

    Read from the file, its models stay JSON text, compressed (400 KiB in all, 60
    compressed), until a lookup first needs them: a gateway looks at a few providers'
    models, and all of them take 2 MiB as objects.
    """

    __slots__ = ("_models", "_raw", "api_pattern", "fallback", "id", "model_match",
                 "provider_match")

    def __init__(self, id: str, api_pattern: str, model_match: Clause | None,
                 provider_match: Clause | None, fallback: tuple[str, ...],
                 models: tuple[Model, ...] | None = None, raw: str | None = None) -> None:
        self.id = id
        self.api_pattern = api_pattern
        self.model_match = model_match
        self.provider_match = provider_match
        self.fallback = fallback
        self._models = models
        #: the models as the file holds them, compressed, when not read yet
        self._raw = None if raw is None else zlib.compress(raw.encode(), 1)

    @property
    def models(self) -> tuple[Model, ...]:
        if self._models is None:
            rates: dict[tuple[Any, ...], Rate] = {}  # models often share a price: one object
            self._models = tuple(
                (model_id, _clause_in(clause),
                 tuple((_constraint_in(c), _rate_in(r, rates)) for c, r in prices))
                for model_id, clause, prices in (
                    orjson.loads(zlib.decompress(self._raw)) if self._raw is not None else ()))
            self._raw = None
        return self._models

    def models_json(self) -> str:
        if self._raw is not None:
            return zlib.decompress(self._raw).decode()
        return orjson.dumps([[model_id, clause, [[c, _rate_out(r)] for c, r in prices]]
                             for model_id, clause, prices in self.models]).decode()


class PriceTable:
    """Every price genai-prices lists, and its lookup rules."""

    def __init__(self, providers: list[ProviderPrices], version: str) -> None:
        self.providers = providers
        #: the genai-prices version the table was read from
        self.version = version
        self._by_id = {p.id: p for p in reversed(providers)}  # the first of an id wins

    # ------------------------------------------------------------------ lookups

    def rate(self, model: str, base_url: str | None, provider_id: str | None,
             when: datetime | None = None) -> Rate | None:
        """The rate for ``model`` (None when no provider lists it, or lists it without
        a price for text or audio), at ``when`` (default now).

        The provider is the one whose API URL ``base_url`` is, else the one named
        ``provider_id``; a model that provider does not list is looked up by its
        name alone.
        """
        model = model.lower()
        provider = None
        if base_url:
            provider = next((p for p in self.providers if re.match(p.api_pattern, base_url)),
                            None)
        if provider is None and provider_id:
            provider = self._provider(provider_id)
            if provider is None:
                log.warning("genai-prices knows no provider %r", provider_id)
        found = self._find_model(provider, model) if provider is not None else None
        if found is None:  # by the model's name alone (a gateway or a reseller of known models)
            provider = next((p for p in self.providers
                             if p.model_match is not None and _matches(p.model_match, model)),
                            None)
            found = self._find_model(provider, model) if provider is not None else None
            if found is None:
                return None
        assert provider is not None
        model_id, _, prices = found
        rate = _price_at(prices, when or datetime.now(tz=UTC))
        if rate is None:
            return None
        return Rate(rate.bands, source=f"genai-prices:{provider.id}/{model_id}",
                    per_second=rate.per_second, per_character=rate.per_character)

    def _provider(self, provider_id: str) -> ProviderPrices | None:
        wanted = provider_id.lower().strip()
        provider = self._by_id.get(wanted)
        if provider is None:
            provider = next((p for p in self.providers if p.provider_match is not None
                             and _matches(p.provider_match, wanted)), None)
        return provider

    def _find_model(self, provider: ProviderPrices, model: str) -> Model | None:
        found = self._match_model(provider, model, fallback=True)
        if found is None:
            normalized = _normalize_compact_dated_ref(model)
            if normalized != model:
                found = self._match_model(provider, normalized, fallback=True)
        return found

    def _match_model(self, provider: ProviderPrices, model: str, *, fallback: bool) -> Model | None:
        for entry in provider.models:
            if _matches(entry[1], model):
                return entry
        if fallback:  # one step only, as genai-prices
            for other_id in provider.fallback:
                other = self._by_id.get(other_id)
                if other is not None:
                    found = self._match_model(other, model, fallback=False)
                    if found is not None:
                        return found
        return None

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def from_snapshot(cls, snapshot: Any, version: str | None = None) -> PriceTable:
        """The table of a ``genai_prices.data_snapshot.DataSnapshot`` (the bundled one or
        one fetched by its updater): every price probed into a :class:`Rate` (about 2 s)."""
        providers = []
        for p in snapshot.providers:
            models = tuple((m.id, _clause(m.match), _prices(m.prices)) for m in p.models)
            providers.append(ProviderPrices(
                p.id, p.api_pattern,
                None if p.model_match is None else _clause(p.model_match),
                None if p.provider_match is None else _clause(p.provider_match),
                tuple(p.fallback_model_providers or ()), models))
        return cls(providers, version or installed_version() or "")

    def to_json(self) -> bytes:
        return orjson.dumps({
            "format": FORMAT,
            "version": self.version,
            "providers": [{
                "id": p.id,
                "api_pattern": p.api_pattern,
                "model_match": p.model_match,
                "provider_match": p.provider_match,
                "fallback": p.fallback,
                "models": p.models_json(),
            } for p in self.providers],
        })

    @classmethod
    def from_json(cls, data: bytes) -> PriceTable:
        """The table :meth:`to_json` wrote.

        :raises ValueError: not such a table, or of another :data:`FORMAT`.
        """
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not a price table of this format")
        providers = [ProviderPrices(
            p["id"], p["api_pattern"],
            None if p["model_match"] is None else _clause_in(p["model_match"]),
            None if p["provider_match"] is None else _clause_in(p["provider_match"]),
            tuple(p["fallback"]), raw=p["models"],
        ) for p in raw["providers"]]
        return cls(providers, raw["version"])


# ---------------------------------------------------------------------- the table on disk

def installed_version() -> str | None:
    """The installed genai-prices' version (None: not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def table_path(data_dir: Path, version: str) -> Path:
    return data_dir / f"genai-prices-{version}.json"


@functools.cache
def bundled() -> PriceTable:
    """The table of the database shipped with genai-prices (built once per process:
    it imports genai-prices)."""
    from genai_prices import data_snapshot

    return PriceTable.from_snapshot(data_snapshot.get_snapshot())


def load_table(data_dir: Path | None) -> PriceTable:
    """The table of the installed genai-prices: read from ``data_dir`` when it was
    written there for this version, else built (:func:`bundled`) and written there
    (a directory that cannot be written is only logged: the table is used all the same)."""
    version = installed_version()
    path = table_path(data_dir, version) if data_dir is not None and version else None
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            table = PriceTable.from_json(path.read_bytes())
            if table.version == version:
                return table
    table = bundled()
    if path is not None:
        try:
            write_table(table, path)
        except OSError as exc:
            log.warning("the price table could not be written to %s: %s", path, exc)
    return table


def write_table(table: PriceTable, path: Path) -> None:
    """Write ``table`` to ``path`` whole or not at all (workers may race), and remove the
    tables of other genai-prices versions beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)  # a data dir not made yet (first start)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".genai-prices-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(table.to_json())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    for old in path.parent.glob("genai-prices-*.json"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def has_table(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the table of the installed genai-prices (or there is
    no genai-prices to read one from)."""
    version = installed_version()
    return version is None or table_path(data_dir, version).is_file()


# ---------------------------------------------------------------------- matching


def _matches(clause: Clause, text: str) -> bool:
    """genai-prices' ``MatchLogic.is_match`` (``text`` lower-cased by the caller)."""
    kind, value = clause
    if kind == "equals":
        return text == value
    if kind == "starts_with":
        return text.startswith(value)
    if kind == "ends_with":
        return text.endswith(value)
    if kind == "contains":
        return value in text
    if kind == "regex":
        return re.search(value, text) is not None
    if kind == "or":
        return any(_matches(c, text) for c in value)
    if kind == "and":
        return all(_matches(c, text) for c in value)
    raise ValueError(f"unknown match rule {kind!r}")


_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def _normalize_compact_dated_ref(model: str) -> str:
    """``gpt-5.2-20251211`` as ``gpt-5.2-2025-12-11`` (genai-prices' rewrite, tried when
    a reference does not match as it is)."""

    def replace(match: re.Match[str]) -> str:
        year, month, day = (int(match.group(i)) for i in range(2, 5))
        try:
            date(year, month, day)
        except ValueError:
            return match.group(0)
        return f"{match.group(1)}{year:04d}-{month:02d}-{day:02d}"

    return _COMPACT_DATE.sub(replace, model)


def _price_at(prices: tuple[tuple[Constraint | None, Rate | None], ...],
              when: datetime) -> Rate | None:
    """``ModelInfo.get_prices``: the last price whose constraint holds, else the first."""
    for constraint, rate in reversed(prices):
        if constraint is None or _active(constraint, when):
            return rate
    return prices[0][1]


def _active(constraint: Constraint, when: datetime) -> bool:
    if when.tzinfo is None:  # naive times are UTC, as genai-prices takes them
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    if constraint[0] == "date":
        return when.date() >= constraint[1]
    start, end = constraint[1], constraint[2]
    now = when.time()
    if end < start:
        return now >= start or now < end
    return start <= now < end


# ---------------------------------------------------------------------- genai-prices' objects

def _clause(logic: Any) -> Clause:
    """A genai-prices ``MatchLogic`` as a :data:`Clause`."""
    for kind in ("equals", "starts_with", "ends_with", "contains"):
        if hasattr(logic, kind):
            return (kind, getattr(logic, kind).lower())
    if hasattr(logic, "regex"):
        return ("regex", logic.regex)
    if hasattr(logic, "or_"):
        return ("or", tuple(_clause(c) for c in logic.or_))
    if hasattr(logic, "and_"):
        return ("and", tuple(_clause(c) for c in logic.and_))
    raise ValueError(f"unknown genai-prices match rule {logic!r}")


def _prices(prices: Any) -> tuple[tuple[Constraint | None, Rate | None], ...]:
    """A model's ``prices`` (one ``ModelPrice``, or ``ConditionalPrice``s)."""
    if not isinstance(prices, list):
        return ((None, from_model_price(prices)),)
    return tuple((_constraint(cp.constraint), from_model_price(cp.prices)) for cp in prices)


def _constraint(constraint: Any) -> Constraint | None:
    if constraint is None:
        return None
    if hasattr(constraint, "start_date"):
        return ("date", constraint.start_date)
    return ("time", _utc_time(constraint.start_time), _utc_time(constraint.end_time))


def _utc_time(value: time) -> time:
    """A time of day in UTC, naive (naive times are UTC already), as genai-prices
    compares them."""
    if value.tzinfo is None:
        return value
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()


# ---------------------------------------------------------------------- JSON

def _rate_out(rate: Rate | None) -> list[Any] | None:
    if rate is None:
        return None
    return [[[b.above, b.per_request, b.input, b.output, b.cache_read_delta,
              b.cache_write_delta, b.output_image_delta] for b in rate.bands],
            rate.per_second, rate.per_character]


def _rate_in(raw: list[Any] | None, seen: dict[tuple[Any, ...], Rate]) -> Rate | None:
    if raw is None:
        return None
    bands, per_second, per_character = raw
    key = (tuple(tuple(b) for b in bands), per_second, per_character)
    rate = seen.get(key)
    if rate is None:
        rate = seen[key] = Rate(tuple(Band(*b) for b in bands), per_second=per_second,
                                per_character=per_character)
    return rate


def _clause_in(raw: Any) -> Clause:
    kind, value = raw
    if kind in ("or", "and"):
        return (kind, tuple(_clause_in(c) for c in value))
    return (kind, sys.intern(value))


def _constraint_in(raw: list[Any] | None) -> Constraint | None:
    if raw is None:
        return None
    if raw[0] == "date":
        return ("date", date.fromisoformat(raw[1]))
    return ("time", time.fromisoformat(raw[1]), time.fromisoformat(raw[2]))

