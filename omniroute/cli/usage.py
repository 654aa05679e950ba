"""``omniroute usage``: what requests cost, as a table by day, model, provider or key."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from omniroute.cli.common import async_command, config_of, echo_json, open_cli_store

if TYPE_CHECKING:
    from omniroute.storage.usage import Bucket

#: ``--by`` choices: the breakdown and, for time, its bucket
_BY: dict[str, tuple[str, Bucket]] = {
    "day": ("time", "day"), "hour": ("time", "hour"), "model": ("model", "day"),
    "provider": ("provider", "day"), "connection": ("connection", "day"), "key": ("key", "day")}
_COLUMNS = (("requests", "requests"), ("errors", "errors"), ("tokens_in", "tokens in"),
            ("tokens_out", "tokens out"), ("cache_read_tokens", "cache read"),
            ("reasoning_tokens", "reasoning"), ("cost_usd", "cost"), ("saved_usd", "saved"))


def _label(by: str, group: dict[str, Any]) -> str:
    if by in ("day", "hour"):
        start = str(group["start"])
        return start[:10] if by == "day" else start[:16].replace("T", " ")
    if by == "key":
        if group["key_id"] is None:
            return "(no key)"
        return f"{group['key_name'] or '?'} ({group['key_id']})"
    if by == "connection":
        if group["connection_id"] is None:
            return "(none)"
        return f"{group['connection_name'] or '?'} ({group['connection_id']})"
    return str(group[by] if group[by] is not None else "(none)")


def _cell(name: str, value: Any) -> str:
    if name in ("cost_usd", "saved_usd"):
        return f"${value:,.4f}"
    return f"{value:,}"


def render_table(by: str, groups: list[dict[str, Any]], totals: dict[str, Any]) -> list[str]:
    """The lines of the table: a header, one line per group, and the totals."""
    header = [by, *(title for _, title in _COLUMNS)]
    rows = [[_label(by, g), *(_cell(n, g[n]) for n, _ in _COLUMNS)] for g in groups]
    footer = ["total", *(_cell(n, totals[n]) for n, _ in _COLUMNS)]
    widths = [max(len(r[i]) for r in (header, *rows, footer)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                                strict=True))]).rstrip()

    rule = "-" * len(line(header))
    return [line(header), rule, *(line(r) for r in rows), rule, line(footer)]


@click.command("usage")
@click.option("--by", "by", type=click.Choice(list(_BY)), default="day", show_default=True,
              help="One row per day, hour, model, provider, connection or key.")
@click.option("--since", default="7d", show_default=True,
              help="From when: a duration back from now (24h, 7d, 2w), a date "
                   "(2024-05-01), an ISO 8601 time or epoch seconds.")
@click.option("--until", default=None, help="Up to when (same forms as --since; default now).")
@click.option("--key", default=None, help="Only this API key's requests (its id).")
@click.option("--model", default=None, help="Only this upstream model.")
@click.option("--provider", default=None, help="Only this provider prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def usage_command(ctx: click.Context, by: str, since: str, until: str | None,
                        key: str | None, model: str | None, provider: str | None,
                        as_json: bool) -> None:
    """Requests, tokens and cost from the request log, with totals.

    Days and hours are UTC. Cost is what was paid; 'saved' is what subscription
    connections' tokens would have cost at list price.
    """
    from omniroute.storage.usage import FilterError, UsageFilter, UsageQueries, parse_time

    now = time.time()
    try:
        where = UsageFilter(
            since=parse_time(since, now=now),
            until=parse_time(until, now=now) if until is not None else None,
            key=key, model=model, provider=provider)
    except FilterError as exc:
        raise click.ClickException(f"--since/--until: {exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    dimension, bucket = _BY[by]
    async with open_cli_store(config_of(ctx)) as store:
        summary = await UsageQueries(store.db).summary(where, bucket=bucket, by=[dimension])
    groups = summary[f"by_{dimension}"]
    if as_json:
        echo_json({"by": by, "since": where.since, "until": where.until,
                   "groups": groups, "totals": summary["totals"]})
        return
    if not summary["totals"]["requests"]:
        click.echo("no requests in this period")
        return
    for text in render_table(by, groups, summary["totals"]):
        click.echo(text)
