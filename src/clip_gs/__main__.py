"""``python -m clip_gs``: the ``clip-gs`` command line."""

import sys

from clip_gs.cli import main

if __name__ == "__main__":
    sys.exit(main())
