"""`python -m edge`: the same as the `shelfscout` console script."""

import sys

from edge.cli import main

sys.exit(main())
