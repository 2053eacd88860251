"""The `clt` console script. It loads the command line itself, so that a Ctrl-C while typer,
rich and the stages' modules are being imported ends like a Ctrl-C at any later moment: one
line and exit 130, not a Python traceback."""

from __future__ import annotations

import sys

from clt.errors import INTERRUPTED


def main() -> None:
    try:
        from clt.cli import main as run
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    run()
