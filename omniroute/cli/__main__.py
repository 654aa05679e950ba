"""``python -m omniroute.cli`` is the ``omniroute`` command (the benchmark starts it so)."""

import sys

from omniroute.cli import main

if __name__ == "__main__":
    if getattr(sys, "frozen", False):  # a frozen Windows build's workers start through here
        import multiprocessing

        multiprocessing.freeze_support()
    main()
