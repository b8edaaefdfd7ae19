"""`python -m cacl_dist.report`: see :mod:`cacl_dist.cli.report`."""

import sys

from cacl_dist.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
