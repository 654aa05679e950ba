"""``python -m omniroute.pricing DATA_DIR``: write genai-prices' price table into DATA_DIR
(``serve`` runs it in a child process when the table is missing, see
:func:`omniroute.server.write_price_table`)."""

import sys
from pathlib import Path

from omniroute.pricing.table import load_table


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m omniroute.pricing DATA_DIR", file=sys.stderr)
        return 2
    load_table(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
