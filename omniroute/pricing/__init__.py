"""What tokens cost: prices from ``genai-prices``, operator overrides on top.

    book = PriceBook(table=load_table(data_dir))   # one per gateway, made with the app
    book.replace([Override("gpt-4o", 2.0, 8.0)])   # the database's overrides
    book.charge(record, target)             # record.cost_usd (and list_cost_usd)
    book.estimate_usd(target, 1200, 4096)   # a budget reservation
    book.blended(target)                    # the cost-optimized strategy's sort key

* :mod:`.book` — where a target's price comes from, and pricing a request;
* :mod:`.rate` — a price as a few floats, read out of genai-prices once;
* :mod:`.table` — genai-prices' database as those floats, kept in the data directory
  (a start reads it without importing genai-prices or pydantic).
"""

from omniroute.pricing.book import Override, PriceBook
from omniroute.pricing.rate import Band, Rate, flat, from_model_price
from omniroute.pricing.table import PriceTable, load_table

__all__ = ["Band", "Override", "PriceBook", "PriceTable", "Rate", "flat", "from_model_price",
           "load_table"]
