"""``python -m neurallabel.core.cli``: the `neurallabel` command (DESIGN.md); the code is in :mod:`.app.cli`."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
