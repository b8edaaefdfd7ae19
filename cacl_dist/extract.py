"""`python -m cacl_dist.extract`: see :mod:`cacl_dist.cli.extract`."""

import sys

from cacl_dist.cli.extract import main

if __name__ == "__main__":
    sys.exit(main())
