"""``omniroute requests`` and ``omniroute rate-limits``: what the gateway did and does."""

from __future__ import annotations

import json
import time

import click

from omniroute.cli.common import (
    async_command,
    config_of,
    echo_json,
    open_cli_store,
)


@click.command("requests")
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@click.option("--failed", is_flag=True, help="Only requests that failed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def requests_cmd(ctx: click.Context, limit: int, failed: bool, as_json: bool) -> None:
    """The request log: who served each request, after how many attempts, and why not."""
    where = "WHERE status >= 400 OR error IS NOT NULL" if failed else ""
    async with open_cli_store(config_of(ctx)) as store:
        rows = [dict(r) for r in await store.db.fetchall(
            f"SELECT * FROM request_log {where} ORDER BY id DESC LIMIT ?", (limit,))]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        when = time.strftime("%H:%M:%S", time.localtime(r["ts"]))
        served = f"{r['provider']}/{r['model']}" if r["provider"] else "-"
        click.echo(f"{when}  {r['status']:>3}  {r['model_requested'] or '-'} -> {served}"
                   f"  attempts {r['attempts']}  {r['latency_ms'] or 0:.0f} ms")
        if r["error"]:
            for part in str(r["error"]).split("; "):  # one failed target per line
                click.echo(f"        {part}")


@click.command("rate-limits")
@click.option("--url", default=None, help="The running gateway (default: this config's).")
@click.option("--admin-key", envvar="OMNIROUTE_ADMIN_KEY", required=True,
              help="An admin-scoped API key (or $OMNIROUTE_ADMIN_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rate_limits_cmd(ctx: click.Context, url: str | None, admin_key: str, as_json: bool) -> None:
    """Each connection's live state in the running gateway: cooling, failures, breaker."""
    import urllib.error
    import urllib.request

    config = config_of(ctx)
    base = (url or f"http://{config.host}:{config.port}").rstrip("/")
    req = urllib.request.Request(f"{base}/api/rate-limits",
                                 headers={"Authorization": f"Bearer {admin_key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{base} answered {exc.code}: {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the gateway at {base}: {exc}") from None
    if as_json:
        echo_json(data)
        return
    health = data.get("health", {})
    click.echo(f"healthy {health.get('healthy', 0)}, degraded {health.get('degraded', 0)}, "
               f"down {health.get('down', 0)}")
    for c in data.get("connections", []):
        line = f"{c.get('status', '?'):<9} {c.get('prefix', '?') + '/':<14} {c.get('name', '')}"
        extras = [f"{k} {c[k]}" for k in ("in_flight", "consecutive_failures", "cooldown_left",
                                          "terminal_reason", "last_error") if c.get(k)]
        click.echo(line + ("  " + ", ".join(extras) if extras else ""))
        if c.get("quota"):  # a subscription: what its service last reported
            from omniroute.oauth.quota import describe

            click.echo(f"          {describe(c['quota'], time.time())}")
