"""Per-key budgets and limits (issue 8, item 5).

Sketch of how the pieces fit::

    limits = Limits.parse({"daily_usd": 5, "rpm": 60, "models": ["openai/*"]})  # validated
    budgets = Budgets(SqliteSpendStore(db), SystemClock())     # one per gateway
    await budgets.start()                                       # load this window's spend
    stage = BudgetStage(budgets, settings=lambda: catalog.settings, prices=price_book)

    slot = budgets.enter(key_id, limits)          # before routing: concurrency, rpm (429)
    held = budgets.reserve(slot, limits, usd, n)  # after routing: budget windows (429 / 503)
    budgets.settle(held, record.cost_usd, tokens) # when the request is over, however it ended
    budgets.leave(slot)

:mod:`.limits` is the model (what a key may do), :mod:`.windows` the UTC
window arithmetic, :mod:`.ledger` the live state and its background sync,
:mod:`.spend` the ``key_spend`` table, :mod:`.stage` the pipeline stage and
:mod:`.view` what the management API and the CLI show.
"""

from omniroute.budgets.ledger import Budgets, Reservation
from omniroute.budgets.limits import PERIODS, Limits
from omniroute.budgets.spend import SpendStore, SqliteSpendStore

__all__ = ["PERIODS", "Budgets", "Limits", "Reservation", "SpendStore", "SqliteSpendStore"]
