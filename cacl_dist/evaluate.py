"""`python -m cacl_dist.evaluate`: see :mod:`cacl_dist.cli.evaluate`."""

import sys

from cacl_dist.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
