"""``python -m helpers.train``: the training entry point, which lives in :mod:`helpers.runtime.train`."""

import sys

from helpers.runtime.train import main

if __name__ == "__main__":
    sys.exit(main())
