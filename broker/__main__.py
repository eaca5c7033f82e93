"""`python -m broker` runs the `opsroom` command."""

import sys

from broker.cli import main

sys.exit(main())
