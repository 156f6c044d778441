"""`python -m services.tasks` (serve) and `python -m services.tasks migrate`."""

from __future__ import annotations

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
