"""``python -m omniroute.cli`` is the ``omniroute`` command (the benchmark starts it so)."""

import multiprocessing

from omniroute.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
