"""The encoder process's entry point: ``python -m omniroute_semantic_cache.child <fd>``.

A module of its own (not ``-m omniroute_semantic_cache.encoder``): the package
imports :mod:`.encoder` already, and running an imported module as ``__main__``
would load it twice. See :mod:`.encoder`.
"""

from __future__ import annotations

import sys

from omniroute_semantic_cache.encoder import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
