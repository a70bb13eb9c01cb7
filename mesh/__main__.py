"""``python -m mesh``: the ``tollmesh`` command line (see :mod:`mesh.cli`)."""

import sys

from mesh.cli import main

if __name__ == "__main__":
    sys.exit(main())
