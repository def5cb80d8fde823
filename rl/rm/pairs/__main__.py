"""`python -m rl.rm.pairs`: runs the command line of rl/rm/pairs/cli.py."""
import sys

from rl.rm.pairs.cli import main

if __name__ == "__main__":
    sys.exit(main())
