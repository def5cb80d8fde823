"""`python -m rl.tools.sweep`: runs the command line of rl/tools/sweep/cli.py."""
import sys

from rl.tools.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
