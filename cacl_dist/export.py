"""`python -m cacl_dist.export`: see :mod:`cacl_dist.cli.export`."""

import sys

from cacl_dist.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
