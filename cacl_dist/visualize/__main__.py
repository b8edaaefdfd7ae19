"""`python -m cacl_dist.visualize`: see :mod:`cacl_dist.visualize.cli`."""

import sys

from .cli import main

sys.exit(main())
