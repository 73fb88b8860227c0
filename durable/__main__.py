"""`python -m durable ...`: the `durable` command line, e.g.
`python -m durable worker -A workers.app -c 2` where the console script is
not on the PATH."""

import sys

from .cli import main

sys.exit(main())
