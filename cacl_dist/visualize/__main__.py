"""`python -m cacl_dist.visualize`: see :mod:`cacl_dist.cli.visualize`."""

import sys

from cacl_dist.cli.visualize import main

sys.exit(main())
