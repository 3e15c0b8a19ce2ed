"""``observatory-processor``: a placeholder until the processor issue lands."""

from __future__ import annotations

import sys


def main() -> None:
    print("observatory-processor: not implemented yet (see the processor issue)", file=sys.stderr)
    sys.exit(2)
