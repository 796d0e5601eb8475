"""``python -m loadtests``: the same command as ``gateway loadtest``."""

import sys

from loadtests.cli import main

# The guard matters: generator processes are spawned and re-import the main module.
if __name__ == "__main__":
    sys.exit(main())
