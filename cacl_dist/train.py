"""`python -m cacl_dist.train`: see :mod:`cacl_dist.cli.train`."""

import sys

from cacl_dist.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
