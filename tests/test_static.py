"""Static checks in the test command: ruff's lint rules and mypy's type check.

Both tools read their configuration from pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``),
so ``ruff check`` or ``mypy`` run by hand from the repository root checks exactly what these
tests check. They run from the test environment (``sys.executable -m``), where
requirements-test.txt installs the pinned versions. A finding fails the test with the
tool's own report as the message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: generous bounds: a cold mypy run on a busy two-core machine takes tens of seconds
RUFF_TIMEOUT = 120.0
MYPY_TIMEOUT = 600.0


def run(tool: str, *args: str, timeout: float, stdin: str | None = None) -> tuple[int, str]:
    """Run ``python -m tool args`` from the repository root: its exit code and output."""
    done = subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, input=stdin, capture_output=True,
        text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


def test_ruff_finds_nothing() -> None:
    code, output = run("ruff", "check", "--no-fix", "--output-format=concise",
                       timeout=RUFF_TIMEOUT)
    assert code == 0, f"ruff check reported problems:\n{output}"


def test_mypy_finds_nothing() -> None:
    code, output = run("mypy", "--config-file=pyproject.toml", timeout=MYPY_TIMEOUT)
    assert code == 0, f"mypy reported problems:\n{output}"


#: one finding from each rule family the configuration selects, in one module
RUFF_PROBE = (
    "import sys\n"
    "import os\n"
    "from typing import List\n"
    "\n\n"
    "def first(items: List[int], seen: list = []) -> bool:\n"
    f"    return 1 in {{1: 2}}.keys() or print('{'long ' * 20}', seen)\n"
    "\n\n"
    "ARGS = sys.argv + ['-v']"  # and no newline at the end
)
RUFF_PROBE_CODES = {"I001", "F401", "UP035", "B006", "SIM118", "E501", "W292", "RUF005"}


@pytest.mark.parametrize("where", [
    "omniroute/probe.py", "tests/probe.py", "scripts/probe.py",
    # this distribution has a pyproject.toml of its own, which extends the repository's rules
    "plugins/omniroute-example-provider/omniroute_example_provider/probe.py",
])
def test_ruff_applies_the_rule_set_everywhere(where: str) -> None:
    code, output = run("ruff", "check", "--no-fix", "--no-cache", "--output-format=concise",
                       f"--stdin-filename={where}", "-", stdin=RUFF_PROBE, timeout=RUFF_TIMEOUT)
    assert code == 1, output
    missing = {c for c in RUFF_PROBE_CODES if f" {c} " not in output}
    assert not missing, f"ruff did not report {sorted(missing)} for {where}:\n{output}"


def test_mypy_applies_the_configured_strictness(tmp_path: Path) -> None:
    # an unannotated function is refused, and its body is still checked
    probe = tmp_path / "probe.py"
    probe.write_text("def untyped(x):\n    y: int = 'no'\n    return x\n")
    code, output = run("mypy", "--config-file=pyproject.toml", str(probe), timeout=MYPY_TIMEOUT)
    assert code == 1, output
    assert "[no-untyped-def]" in output, output
    assert "[assignment]" in output, output
