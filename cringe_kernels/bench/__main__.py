"""``python -m cringe_kernels.bench``: run the benchmark sweep."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
