"""`python -m services.queue` runs the queue service."""

import sys

from services.queue.main import main

if __name__ == "__main__":
    sys.exit(main())
