"""``python -m benchmarks``: the same as ``tollmesh bench`` (see :mod:`benchmarks.command`)."""

import sys

from benchmarks.command import main

sys.exit(main())
