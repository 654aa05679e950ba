"""``omniroute budget set|show`` and the limit options of ``omniroute keys create``.

They work on the database, like every configuration command; a running gateway
sees a change within a second (its config watcher reloads the key index).
``budget show`` reads the spend the gateways wrote (they write it every second).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click

from omniroute.budgets import PERIODS, Budgets, Limits, SqliteSpendStore
from omniroute.budgets.limits import parse_expiry
from omniroute.budgets.view import budget_view, merged_limits
from omniroute.cli.common import async_command, config_of, echo_json, open_cli_store
from omniroute.resilience.clock import SystemClock
from omniroute.storage import Store


def limit_options(budget: Sequence[str], tokens: Sequence[str], models: Sequence[str],
                  rpm: int | None, concurrency: int | None) -> dict[str, Any]:
    """The ``limits`` JSON from ``keys create``'s flags (``--budget 50`` is monthly)."""
    data: dict[str, Any] = {}
    for period, value in _per_period(budget, "--budget", float):
        data[f"{period}_usd"] = value
    for period, value in _per_period(tokens, "--tokens", int):
        data[f"{period}_tokens"] = value
    patterns = [m.strip() for given in models for m in given.split(",") if m.strip()]
    if patterns:
        data["models"] = patterns
    if rpm is not None:
        data["rpm"] = rpm
    if concurrency is not None:
        data["concurrency"] = concurrency
    return data


def _per_period(values: Sequence[str], flag: str, kind: type) -> list[tuple[str, Any]]:
    out = []
    for given in values:
        period, sep, amount = given.rpartition("=")
        period = period.strip().lower() if sep else "monthly"
        if period not in PERIODS:
            raise click.BadParameter(f"{given!r}: the period must be one of "
                                     f"{', '.join(PERIODS)}", param_hint=flag)
        try:
            out.append((period, kind(amount.strip())))
        except ValueError:
            raise click.BadParameter(f"{given!r}: not a number", param_hint=flag) from None
    return out


def parsed_limits(data: dict[str, Any]) -> Limits | None:
    try:
        return Limits.parse(data)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def parsed_expiry(value: str | None) -> float | None:
    try:
        return parse_expiry(value, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None


@click.group("budget")
def budget_command() -> None:
    """Per-key USD budgets and token limits: set them, show spend against them."""


@budget_command.command("set")
@click.argument("key")
@click.option("--daily", type=float, help="USD per UTC day.")
@click.option("--weekly", type=float, help="USD per week (from Monday).")
@click.option("--monthly", type=float, help="USD per calendar month.")
@click.option("--daily-tokens", type=int, help="Tokens (in + out) per day.")
@click.option("--weekly-tokens", type=int, help="Tokens per week.")
@click.option("--monthly-tokens", type=int, help="Tokens per month.")
@click.option("--warn-at", type=float,
              help="Share of a budget past which answers carry a warning (default 0.8).")
@click.option("--reset-time", help="UTC time of day the windows start, HH:MM (default 00:00).")
@click.option("--clear", is_flag=True, help="Remove the key's budgets and token limits first.")
@click.pass_context
@async_command
async def budget_set(ctx: click.Context, key: str, clear: bool, **values: Any) -> None:
    """Set KEY's budgets (KEY: its id or name), e.g. `--daily 5 --monthly 50`."""
    from omniroute.cli.audit import audited

    names = {"daily": "daily_usd", "weekly": "weekly_usd", "monthly": "monthly_usd"}
    changes = {names.get(k, k): v for k, v in values.items() if v is not None}
    if clear:
        changes = {**{f: None for f in (*names.values(), *(f"{p}_tokens" for p in PERIODS))},
                   **changes}
    if not changes:
        raise click.UsageError("Give a limit: --daily, --weekly, --monthly, --*-tokens, "
                               "--warn-at, --reset-time or --clear.")
    async with open_cli_store(config_of(ctx)) as store:
        async with audited(store, "POST /api/usage/budget", "budgets",
                           request={"keyId": key, **changes}) as change:
            found = await store.get_key(key)
            if found is None:
                change.status = 404
                raise click.ClickException(f"no key {key!r}")
            change.target = found.id
            try:
                limits = merged_limits(found.limits, changes)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
            await store.update_key(found.id, limits=limits)
        views = await _views(store, [await _key(store, found.id)])
    _print(views)


@budget_command.command("show")
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def budget_show(ctx: click.Context, key: str | None, as_json: bool) -> None:
    """Every key's spend in its current windows (or KEY's alone)."""
    async with open_cli_store(config_of(ctx)) as store:
        if key is not None:
            keys = [await _key(store, key)]
        else:
            keys = [k for k in await store.list_keys() if k.revoked_at is None]
        views = await _views(store, keys)
    if as_json:
        echo_json(views if key is None else views[0])
        return
    _print(views)


async def _key(store: Store, id_or_name: str) -> Any:
    found = await store.get_key(id_or_name)
    if found is None:
        raise click.ClickException(f"no key {id_or_name!r}")
    return found


async def _views(store: Store, keys: list[Any]) -> list[dict[str, Any]]:
    budgets = Budgets(SqliteSpendStore(store.db), SystemClock())
    await budgets.sync()  # reads what the gateways wrote; nothing to write from here
    return [budget_view(k, budgets) for k in keys]


def _print(views: list[dict[str, Any]]) -> None:
    click.echo(f"{'KEY':<18} {'NAME':<16} {'PERIOD':<8} {'SPEND':>10} {'LIMIT':>10} "
               f"{'REMAINING':>10} {'TOKENS':>10}  RESETS")
    for view in views:
        windows = view["windows"] or [{"period": "-", "spend": None, "limit": None,
                                       "remaining": None, "tokens": None, "reset": ""}]
        for w in windows:
            click.echo(f"{view['keyId']:<18} {view['name'][:16]:<16} {w['period']:<8} "
                       f"{_usd(w['spend']):>10} {_usd(w['limit']):>10} "
                       f"{_usd(w['remaining']):>10} {_count(w, 'tokens', 'tokenLimit'):>10}  "
                       f"{w['reset']}")


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def _count(window: dict[str, Any], used: str, cap: str) -> str:
    if window.get(used) is None:
        return "-"
    return f"{window[used]}/{window[cap]}" if window.get(cap) is not None else str(window[used])
