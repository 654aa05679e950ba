"""Every hookspec is a contract: typed, documented, and tested by name.

The meta-test fails when a hook is added to ``omniroute.hookspecs`` without a
docstring with ``:param:`` lines, type annotations, a ``### `name(`` heading in
docs/plugins.md, or a ``test_hook_<name>`` function in one of the hook test modules
(``tests/test_hooks_*.py``).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omniroute import (
    hookspecs,
)
from omniroute.plugins import load_plugins

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
#: the modules holding the ``test_hook_<name>`` tests, one module per family of hooks
HOOK_TESTS = sorted(Path(__file__).resolve().parent.glob("test_hooks_*.py"))


def _hook_tests() -> set[str]:
    """The names of the module-level functions of the hook test modules (read from the
    source, so they are not imported and collected a second time)."""
    return {node.name for path in HOOK_TESTS for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _hookspecs() -> list[Callable[..., Any]]:
    return [
        fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(fn, "omniroute_spec", None) is not None
    ]


def hookspec_problems(fn: Callable[..., Any], docs: str, tests: set[str]) -> list[str]:
    """What is missing from the contract of hookspec ``fn`` (empty when complete)."""
    name = fn.__name__
    problems = []
    doc = inspect.getdoc(fn) or ""
    summary = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not summary or summary.startswith(":"):
        problems.append(f"{name}: no one-line summary in the docstring")
    sig = inspect.signature(fn)
    for param in sig.parameters.values():
        if not re.search(rf"^:param {re.escape(param.name)}:", doc, re.MULTILINE):
            problems.append(f"{name}: no ':param {param.name}:' line")
        if param.annotation is inspect.Parameter.empty:
            problems.append(f"{name}: parameter {param.name!r} has no type annotation")
    if sig.return_annotation is inspect.Signature.empty:
        problems.append(f"{name}: no return annotation")
    if f"### `{name}(" not in docs:
        problems.append(f"{name}: no '### `{name}(' heading in docs/plugins.md")
    if f"test_hook_{name}" not in tests:
        problems.append(f"{name}: no test_hook_{name} in tests/test_hooks_*.py")
    return problems


def test_every_hookspec_is_typed_documented_and_tested() -> None:
    specs = _hookspecs()
    # the five hooks of docs/architecture.md, at least (a new one must pass the same checks)
    assert {f.__name__ for f in specs} >= {
        "register_providers", "register_cache_backends", "register_auth_schemes",
        "register_commands", "configure_app", "register_formats", "register_stages",
    }
    docs = DOCS.read_text()
    assert HOOK_TESTS, "no tests/test_hooks_*.py found"
    tests = _hook_tests()
    problems = [p for fn in specs for p in hookspec_problems(fn, docs, tests)]
    assert not problems, "\n".join(problems)


def test_meta_check_catches_an_incomplete_hookspec() -> None:
    """The checker itself must notice each kind of gap (or the meta-test proves nothing)."""

    def undocumented_hook(app, count: int):  # type: ignore[no-untyped-def]
        """:param count: how many."""

    problems = hookspec_problems(undocumented_hook, "", set())
    text = "\n".join(problems)
    assert "no one-line summary" in text
    assert "no ':param app:' line" in text
    assert "parameter 'app' has no type annotation" in text
    assert "no return annotation" in text
    assert "no '### `undocumented_hook(' heading" in text
    assert "no test_hook_undocumented_hook" in text
    assert "':param count:'" not in text


@pytest.mark.parametrize("spec", _hookspecs(), ids=lambda f: f.__name__)
def test_hookspec_is_exported_from_plugin_manager(spec: Callable[..., Any]) -> None:
    pm = load_plugins(entry_points=lambda: []).pm
    assert getattr(pm.hook, spec.__name__).spec is not None
