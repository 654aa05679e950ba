"""The layout of ``omniroute/formats``: one package per format, none importing another,
and no import cycle among the modules.

The imports are read from the source (``ast``), lazy ones inside functions included,
so a cycle cannot hide behind an import moved into a method.
"""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import omniroute.formats

PACKAGE = "omniroute.formats"
ROOT = Path(omniroute.formats.__file__).parent
FORMATS = ("openai", "anthropic", "gemini", "responses", "ollama", "completions")


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package under its own name)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, at any depth in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # ``from pkg import sub`` imports the submodule; ``from mod import name``, mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph(root: Path, package: str) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(name, path, known) for name, path in known.items()}


def format_packages(root: Path, package: str) -> set[str]:
    return {f"{package}.{p.parent.name}" for p in root.glob("*/__init__.py")}


def owner(module: str, packages: set[str]) -> str | None:
    """The format package ``module`` belongs to; None for a shared module."""
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def cross_imports(edges: dict[str, set[str]], packages: set[str]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a module reaches into a format not its own."""
    return sorted((m, t) for m, targets in edges.items() for t in targets
                  if owner(t, packages) not in (None, owner(m, packages)))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------- the real tree


def test_every_format_is_a_package_with_request_response_and_stream_modules() -> None:
    known = modules(ROOT, PACKAGE)
    assert format_packages(ROOT, PACKAGE) == {f"{PACKAGE}.{f}" for f in FORMATS}
    for fmt in FORMATS:
        for part in ("request", "response", "stream"):
            assert f"{PACKAGE}.{fmt}.{part}" in known, f"{fmt} has no {part} module"
    shared = [p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"]
    assert not [s for s in shared if s.startswith(FORMATS)], "format code left in the flat dir"


def test_no_format_imports_another_format() -> None:
    edges = graph(ROOT, PACKAGE)
    assert sum(len(t) for t in edges.values()) > 50, "the import reader found too little"
    assert cross_imports(edges, format_packages(ROOT, PACKAGE)) == []


def test_no_import_cycle_inside_formats() -> None:
    assert cycles(graph(ROOT, PACKAGE)) == []


def test_format_entry_points_name_the_format_packages() -> None:
    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="omniroute")
              if ep.name.endswith("-format")}
    assert points, "no format entry points: is omniroute installed (pip install -e .)?"
    for name, value in points.items():
        assert owner(value, format_packages(ROOT, PACKAGE)) == value, (name, value)


# ---------------------------------------------------------------------------- the checks


def test_the_checks_find_a_cross_format_import_and_a_lazy_cycle(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "shared.py": "import pkg.b\n",
        "a/__init__.py": "def f():\n    from pkg.a import stream\n",
        "a/stream.py": "from pkg.a import f\nfrom . import parts\n",
        "a/parts.py": "from pkg import shared\n",
        "b/__init__.py": "from pkg.a.parts import x\nfrom pkg.b import stream\n",
        "b/stream.py": "from ..a import parts\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = graph(tmp_path, "pkg")
    assert edges["pkg.a.stream"] == {"pkg.a", "pkg.a.parts"}
    assert cross_imports(edges, format_packages(tmp_path, "pkg")) == [
        ("pkg.b", "pkg.a.parts"), ("pkg.b.stream", "pkg.a.parts"), ("pkg.shared", "pkg.b")]
    assert sorted(cycles(edges)) == [["pkg.a", "pkg.a.stream"],
                                     ["pkg.a.parts", "pkg.b", "pkg.b.stream", "pkg.shared"]]
