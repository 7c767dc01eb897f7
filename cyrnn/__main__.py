"""``python -m cyrnn``: the ``cyrnn`` command (see :mod:`cyrnn.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
