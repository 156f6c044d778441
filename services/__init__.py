"""The services: tasks, queue, verification, gateway."""
