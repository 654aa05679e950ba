"""The compact price table: the same prices as genai-prices' own lookups and calc_price,
kept in the data directory per genai-prices version, read without genai-prices."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price, data_snapshot

from omniroute.pricing import table as table_module
from omniroute.pricing.rate import Rate, from_model_price
from omniroute.pricing.table import PriceTable, bundled, load_table, table_path

NOW = datetime.now(tz=UTC)


def reference(model: str, base_url: str | None, provider_id: str | None,
              when: datetime = NOW) -> Rate | None:
    """How the price book looked a model up in genai-prices itself, before the table."""
    snapshot = data_snapshot.get_snapshot()
    model = model.lower()
    provider = None
    if base_url:
        try:
            provider = snapshot.find_provider(None, None, base_url)
        except LookupError:
            provider = None
    if provider is None and provider_id:
        with contextlib.suppress(LookupError):
            provider = snapshot.find_provider(None, provider_id, None)
    info = None
    if provider is not None:
        info = provider.find_model(model, all_providers=snapshot.providers)
    if info is None:
        try:
            provider, info = snapshot.find_provider_model(model, None, None, None)
        except LookupError:
            return None
    assert provider is not None
    return from_model_price(info.get_prices(when),
                            source=f"genai-prices:{provider.id}/{info.id}")


@pytest.fixture(scope="module")
def table() -> PriceTable:
    """The bundled table, through its file format (as a gateway reads it)."""
    return PriceTable.from_json(bundled().to_json())


#: where a connection can say its prices come from: (base_url, price_provider)
SOURCES = [(None, None), (None, "openai"), (None, "anthropic"), (None, "google"),
           (None, "azure"), (None, "groq"), (None, "no-such-provider"), (None, "litellm"),
           ("https://openrouter.ai/api/v1", None), ("https://api.groq.com/openai/v1", "openai"),
           ("https://api.openai.com/v1", None), ("http://127.0.0.1:8080/v1", "anthropic")]


def test_every_model_is_found_with_the_same_rate_as_genai_prices_finds_it(
        table: PriceTable, caplog: Any) -> None:
    caplog.set_level(logging.ERROR)  # the unknown provider's warning, once per lookup
    names = {"made-up-model", "gpt-5.2-20251211", "anthropic/claude-3.5-sonnet", "GPT-4O"}
    for provider in data_snapshot.get_snapshot().providers:
        names.update(model.id for model in provider.models)
    found = 0
    for name in sorted(names):
        for base_url, provider_id in SOURCES:
            expected = reference(name, base_url, provider_id)
            assert table.rate(name, base_url, provider_id) == expected, (name, base_url,
                                                                         provider_id)
            found += expected is not None
    assert len(names) > 1500 and found > 5000  # the whole database, not an empty table


@pytest.mark.parametrize(("model", "provider_id"), [
    ("gpt-4o", "openai"),                  # cache reads
    ("claude-sonnet-4-5", "anthropic"),    # cache reads and writes
    ("gemini-2.5-pro", "google"),          # a tier over 200k input tokens
    ("claude-sonnet-4-5", "google"),       # a fallback provider's model
    ("gpt-image-1", "openai"),             # image output tokens
    ("deepseek-chat", "deepseek"),         # off-peak hours
])
@pytest.mark.parametrize(("inp", "out", "read", "write", "image"), [
    (1000, 200, 0, 0, 0), (5000, 700, 3000, 1000, 0), (250_000, 4096, 100_000, 20_000, 0),
    (150, 1000, 0, 0, 1000),
])
def test_a_tables_rate_costs_what_genai_prices_calc_price_says(
        table: PriceTable, model: str, provider_id: str, inp: int, out: int, read: int,
        write: int, image: int) -> None:
    rate = table.rate(model, None, provider_id)
    assert rate is not None
    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                  cache_write_tokens=write, output_image_tokens=image)
    expected = calc_price(usage, model, provider_id=provider_id).total_price
    assert rate.cost(inp, out, read, write, image) == pytest.approx(float(expected), rel=1e-9,
                                                                    abs=1e-15)


def test_dated_and_time_of_day_prices_follow_the_time_of_the_lookup(table: PriceTable) -> None:
    snapshot = data_snapshot.get_snapshot()
    conditional = [(p.id, m.id, m.prices) for p in snapshot.providers for m in p.models
                   if isinstance(m.prices, list)]
    hours = {type(cp.constraint).__name__ for *_, prices in conditional for cp in prices}
    assert {"StartDateConstraint", "TimeOfDateConstraint"} <= hours  # both kinds are tested
    moments = [datetime.combine(day, time(hour, minute), tzinfo=UTC)
               for day in (date(2023, 6, 1), date(2025, 2, 8), NOW.date() + timedelta(days=1))
               for hour, minute in ((0, 0), (0, 30), (16, 29), (16, 31), (23, 59))]
    for provider_id, model_id, _ in conditional:
        for when in moments:
            assert (table.rate(model_id, None, provider_id, when)
                    == reference(model_id, None, provider_id, when)), (model_id, when)


def test_a_start_reads_the_table_from_the_data_directory(tmp_path: Path, monkeypatch: Any
                                                          ) -> None:
    first = load_table(tmp_path)
    version = table_module.installed_version()
    assert version is not None and first.version == version
    path = table_path(tmp_path, version)
    assert path.is_file()

    def no_build() -> PriceTable:
        raise AssertionError("the table was built again")

    monkeypatch.setattr(table_module, "bundled", no_build)
    again = load_table(tmp_path)  # read from the file
    assert again.rate("gpt-4o", None, "openai") == first.rate("gpt-4o", None, "openai")
    assert again.rate("gpt-4o", None, "openai") is not None


def test_a_table_of_another_version_or_layout_is_built_again_and_the_old_removed(
        tmp_path: Path, monkeypatch: Any) -> None:
    version = table_module.installed_version()
    assert version is not None
    old = table_path(tmp_path, "0.0.1")
    old.write_bytes(bundled().to_json())
    current = table_path(tmp_path, version)
    current.write_bytes(b'{"format": 0, "version": "%s", "providers": []}' % version.encode())
    table = load_table(tmp_path)
    assert table.rate("gpt-4o", None, "openai") is not None
    assert not old.exists()
    assert PriceTable.from_json(current.read_bytes()).rate("gpt-4o", None, "openai") is not None


def test_a_data_directory_that_cannot_be_written_still_gets_prices(
        tmp_path: Path, caplog: Any) -> None:
    missing = tmp_path / "file-not-dir"
    missing.write_text("x")  # a file where the directory should be: writing fails
    table = load_table(missing)
    assert table.rate("gpt-4o", None, "openai") is not None
    assert "could not be written" in caplog.text


def test_a_data_directory_not_made_yet_is_made_for_the_table(tmp_path: Path,
                                                             caplog: Any) -> None:
    """The first start may price before the database made the data directory."""
    fresh = tmp_path / "new" / "omniroute"
    load_table(fresh)
    version = table_module.installed_version()
    assert version is not None and table_path(fresh, version).is_file()
    assert "could not be written" not in caplog.text
