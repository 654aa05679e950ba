"""Start-up choices that keep a process's resident memory down (imported first by omniroute).

frozenlist (aiohttp's signals and middleware lists) ships a Cython build linked
with libstdc++: loading it maps and relocates that library for 1.0 MiB of
resident memory (``import aiohttp.web, uvloop``: 37.3 MiB against 36.3 with the
pure-Python build), for a list class that the gateway walks once a response
(``on_response_prepare``, ~0.2 µs more). frozenlist picks its build from an
environment variable read once, at its import, so this module sets it for that
import only: aiohttp imports the module already loaded, and the environment that
child processes inherit is left as it was. An explicit ``FROZENLIST_NO_EXTENSIONS``
(empty for the C build) wins, as does a frozenlist imported before omniroute.
"""

from __future__ import annotations

import os
import sys

NO_EXTENSIONS = "FROZENLIST_NO_EXTENSIONS"


def pure_frozenlist() -> None:
    """Import frozenlist's pure-Python build, unless it is loaded or its choice is set."""
    if "frozenlist" in sys.modules or NO_EXTENSIONS in os.environ:
        return
    os.environ[NO_EXTENSIONS] = "1"
    try:
        import frozenlist  # noqa: F401
    finally:
        del os.environ[NO_EXTENSIONS]


pure_frozenlist()
