"""README.md is a tutorial; these tests keep it true.

Its fenced code blocks are of three kinds:

* ```` ```python file=PATH ````: the blocks naming one file, joined with two blank
  lines, are that file, exactly (the README shows the whole module);
* ```` ```LANG from=PATH ````: an excerpt, found verbatim in that file;
* any other ```` ```python ```` block: a client snippet, followed by a ```` ```text ````
  block with what it prints. The snippets run in order, in one namespace, against
  the real in-process gateway (the ``omniroute`` fixture) with an ``example``
  connection, its address put in place of ``http://127.0.0.1:20128``.

Names and paths of omniroute the README mentions must exist.
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import omniroute
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:20128"


@dataclass
class Block:
    lang: str
    attrs: dict[str, str]
    code: str
    line: int


def blocks() -> list[Block]:
    found = []
    for match in re.finditer(r"^```(\w*)([^\n]*)\n(.*?)^```$", README, re.MULTILINE | re.DOTALL):
        attrs = dict(a.split("=", 1) for a in match.group(2).split())
        line = README.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), attrs, match.group(3), line))
    return found


def snippets() -> list[tuple[Block, Block]]:
    """The client snippets, each with the block of what it prints."""
    found = []
    every = blocks()
    for block, after in zip(every, [*every[1:], None], strict=True):
        if block.lang == "python" and not block.attrs:
            assert after is not None and after.lang == "text", \
                f"README.md:{block.line}: a snippet needs a ```text block of what it prints"
            found.append((block, after))
    return found


@pytest.fixture
async def gateway(omniroute: Any) -> Any:
    await omniroute.add_provider({"type": "example"})
    return omniroute


def test_the_module_blocks_are_the_module():
    files: dict[str, list[str]] = {}
    for block in blocks():
        if "file" in block.attrs:
            files.setdefault(block.attrs["file"], []).append(block.code.strip("\n"))
    assert files, "no ```python file=... block"
    for path, parts in files.items():
        assert "\n\n\n".join(parts) + "\n" == (ROOT / path).read_text(), \
            f"README.md's blocks of {path} differ from the file"


def test_the_excerpts_are_in_their_files():
    excerpts = [b for b in blocks() if "from" in b.attrs]
    assert excerpts
    for block in excerpts:
        assert block.code in (ROOT / block.attrs["from"]).read_text(), \
            f"README.md:{block.line}: not found in {block.attrs['from']}"


def test_every_python_block_is_checked():
    kinds = [bool(b.attrs) for b in blocks() if b.lang == "python"]
    assert kinds.count(False) == len(snippets()) >= 3


async def test_named_omniroute_paths_and_names_exist(gateway):
    package = Path(omniroute.__file__).parent
    paths = set(re.findall(r"`omniroute/([\w/]+\.py)`", README))
    assert paths
    for path in paths:
        assert (package / path).is_file(), f"README.md names omniroute/{path}"
    # `omniroute.X` is the package's public surface, or the `omniroute` fixture's helper X
    names = set(re.findall(r"`(?:await )?omniroute\.(\w+)", README))
    assert {"CanonicalProvider", "canonical", "add_provider"} <= names
    for name in names:
        assert name in [*omniroute.__all__, "__all__"] or hasattr(gateway, name), \
            f"README.md names omniroute.{name}"


async def test_the_snippets_print_what_the_readme_shows(gateway):
    namespace: dict[str, Any] = {}

    def run(code: str) -> str:
        out = io.StringIO()
        namespace["print"] = lambda *args, **kwargs: print(*args, **kwargs, file=out)
        exec(compile(code, "README.md", "exec"), namespace)
        return out.getvalue()

    for snippet, shown in snippets():
        code = snippet.code.replace(DEFAULT_URL, gateway.base_url)
        async with asyncio.timeout(30):  # sync SDKs: in a thread, while the gateway serves
            printed = await asyncio.to_thread(run, code)
        assert printed == shown.code, f"README.md:{snippet.line}"
