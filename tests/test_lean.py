"""omniroute.lean: frozenlist's pure-Python build, chosen for its import only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ("import json, os, sys, omniroute, frozenlist; print(json.dumps("
         "[frozenlist.FrozenList.__module__, os.environ.get('FROZENLIST_NO_EXTENSIONS'), "
         "any('libstdc++' in line for line in open('/proc/self/maps'))"
         " if sys.platform == 'linux' else False]))")


def probe(**env: str) -> list[object]:
    environ = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def test_omniroute_imports_the_pure_build_and_leaves_the_environment_alone() -> None:
    module, leaked, stdcpp = probe()
    assert module == "frozenlist"  # the C build's class lives in frozenlist._frozenlist
    assert leaked is None  # children do not inherit the choice
    assert not stdcpp


def test_an_explicit_choice_wins() -> None:
    assert probe(FROZENLIST_NO_EXTENSIONS="")[0] == "frozenlist._frozenlist"
