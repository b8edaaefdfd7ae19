"""`python -m cacl_dist.search`: see :mod:`cacl_dist.cli.search`."""

import sys

from cacl_dist.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
