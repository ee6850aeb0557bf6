"""``python -m engine``: the ``approxft`` command line (``engine.cli``)."""

import sys

from .cli import main

sys.exit(main())
