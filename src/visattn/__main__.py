"""``python -m visattn``: the ``visattn`` command line."""

import sys

from .cli import main

sys.exit(main())
