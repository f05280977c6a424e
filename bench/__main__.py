"""`python -m bench`: see bench/_cli.py and docs/BENCHMARKS.md."""

import sys

from ._cli import main

sys.exit(main())
