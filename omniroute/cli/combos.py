"""``omniroute combos``: several models or accounts behind one model name."""

from __future__ import annotations

import json
from typing import Any

import click

from omniroute.cli.common import (
    async_command,
    config_of,
    echo_json,
    open_cli_store,
)


@click.group()
def combos() -> None:
    """Manage combos: several models or accounts behind one model name."""


@combos.command("add")
@click.argument("name")
@click.argument("steps", nargs=-1, required=True)
@click.option("--strategy", default="priority", show_default=True,
              help="How targets are chosen (priority, round-robin, weighted, ...).")
@click.pass_context
@async_command
async def combos_add(ctx: click.Context, name: str, steps: tuple[str, ...], strategy: str) -> None:
    """Add (or replace) combo NAME over STEPS: 'prefix/model' or a JSON step object.

    The strategy, the step fields and pinned connections are checked (errors);
    steps that do not resolve with the stored connections, aliases and combos
    are reported as warnings, since a model list only the running gateway
    fetches may still make them resolve.
    """
    from omniroute.accounts import build_combo, unresolved_steps
    from omniroute.cli.audit import audited

    parsed: list[Any] = []
    for step in steps:
        if step.lstrip().startswith("{"):
            try:
                parsed.append(json.loads(step))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"step {step!r} is not valid JSON: {exc}") from None
        else:
            parsed.append(step)
    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "POST /api/combos", "combo", name, status=201,
                    request={"name": name, "steps": parsed, "strategy": strategy}) as change:
        existing_all = await store.list_combos()
        existing = next((c for c in existing_all if c.name == name), None)
        connections = await store.list_connections()
        try:
            combo = build_combo({"name": name, "steps": parsed, "strategy": strategy},
                                existing_all, existing, connections=connections)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        others = [c for c in existing_all if existing is None or c.id != existing.id]
        router = _offline_router(connections, await store.list_aliases(), [*others, combo])
        problems = unresolved_steps(combo.steps, lambda m: router.resolve(m).targets,
                                    connections)
        if existing is not None:  # a replacement, as PUT /api/combos/{id} makes
            change.action, change.status = "PUT /api/combos/{id}", 200
        change.target = combo.id
        await store.save_combo(combo)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{'updated' if existing else 'added'} combo {combo.id}: {name} "
               f"({combo.strategy}, {len(parsed)} steps)")


def _offline_router(connections: list[Any], aliases: dict[str, str], combos: list[Any]) -> Any:
    """A router over the stored configuration alone: no provider instances are
    started and only the models a connection lists in its settings are known."""
    from omniroute.providers.base import Provider
    from omniroute.routing import Router

    providers = {c.id: Provider(c, None) for c in connections  # type: ignore[arg-type]
                 if c.active}
    models = {c.id: list(c.settings.get("models") or []) for c in connections}
    return Router(providers, aliases, combos, models)


@combos.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@async_command
async def combos_list(ctx: click.Context, as_json: bool) -> None:
    """List combos and their steps."""
    async with open_cli_store(config_of(ctx)) as store:
        items = [c.public() for c in await store.list_combos()]
    if as_json:
        echo_json(items)
        return
    for c in items:
        click.echo(f"{c['id']}  {c['name']}  ({c['strategy']})")
        for i, step in enumerate(c["steps"], 1):
            click.echo(f"    {i}. {step if isinstance(step, str) else json.dumps(step)}")


@combos.command("remove")
@click.argument("name_or_id")
@click.pass_context
@async_command
async def combos_remove(ctx: click.Context, name_or_id: str) -> None:
    """Remove a combo by name or id."""
    from omniroute.cli.audit import audited

    async with open_cli_store(config_of(ctx)) as store, \
            audited(store, "DELETE /api/combos/{id}", "combo", name_or_id) as change:
        found = next((c for c in await store.list_combos() if name_or_id in (c.id, c.name)), None)
        if found is None:
            change.status = 404
            raise click.ClickException(f"no combo {name_or_id!r}")
        change.target = found.id
        await store.delete_combo(found.id)
    click.echo(f"removed combo {found.name}")
