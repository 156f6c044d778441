"""`python -m services.queue` runs the queue service."""

from services.queue.main import main

if __name__ == "__main__":
    main()
