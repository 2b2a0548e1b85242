"""``python -m cringe_kernels.iterative``: see :mod:`cringe_kernels.iterative.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
