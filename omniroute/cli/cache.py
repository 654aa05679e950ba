"""``omniroute cache stats|clear``: the running gateway's response cache.

The memory backend lives inside the gateway process, so these commands ask the
running gateway (``GET`` / ``DELETE /api/cache/stats``) with an admin key, like
``omniroute rate-limits``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import click

from omniroute.cli.common import config_of, echo_json


def _call(ctx: click.Context, url: str | None, admin_key: str, method: str) -> Any:
    config = config_of(ctx)
    base = (url or f"http://{config.host}:{config.port}").rstrip("/")
    req = urllib.request.Request(f"{base}/api/cache/stats", method=method,
                                 headers={"Authorization": f"Bearer {admin_key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{base} answered {exc.code}: {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the gateway at {base}: {exc}") from None


_URL = click.option("--url", default=None, help="The running gateway (default: this config's).")
_ADMIN_KEY = click.option("--admin-key", envvar="OMNIROUTE_ADMIN_KEY", required=True,
                          help="An admin-scoped API key (or $OMNIROUTE_ADMIN_KEY).")


@click.group("cache")
def cache_command() -> None:
    """The response cache of the running gateway."""


@cache_command.command("stats")
@_URL
@_ADMIN_KEY
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cache_stats(ctx: click.Context, url: str | None, admin_key: str, as_json: bool) -> None:
    """Hits, misses and the size of each backend and layer."""
    data = _call(ctx, url, admin_key, "GET")
    if as_json:
        echo_json(data)
        return
    exact = data.get("exact", {})
    rate = data.get("semanticCache", {}).get("hitRate", 0.0)
    click.echo(f"hits {exact.get('hits', 0)}, misses {exact.get('misses', 0)}, "
               f"bypassed {exact.get('bypasses', 0)}, hit rate {rate:.1%}, "
               f"stored {exact.get('stored', 0)}")
    for kind in ("backends", "layers"):
        for name, numbers in data.get(kind, {}).items():
            shown = ", ".join(f"{k} {v}" for k, v in numbers.items())
            click.echo(f"  {name:<10} {shown}")


@cache_command.command("clear")
@_URL
@_ADMIN_KEY
@click.pass_context
def cache_clear(ctx: click.Context, url: str | None, admin_key: str) -> None:
    """Forget every cached answer (every backend and layer)."""
    _call(ctx, url, admin_key, "DELETE")
    click.echo("cache cleared")
