"""`opsroom` whose escalation worker raises as soon as it starts: a hub process with a background task that dies.

python -m tests.integration.failing_hub <opsroom arguments>
"""

from __future__ import annotations

import sys

from broker import cli
from broker.delivery.escalation import Escalator
from tests import factories as f


async def _dies(_self: Escalator) -> None:
    raise RuntimeError(f"failed on {f.CALLER_SURNAME}")


if __name__ == "__main__":
    Escalator.run = _dies  # type: ignore[method-assign]
    sys.exit(cli.main(sys.argv[1:]))
