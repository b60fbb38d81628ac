"""`python -m digitlab ...` is the same as the `digitlab` console script."""
import sys

from digitlab.cli import main

sys.exit(main())
