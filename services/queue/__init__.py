"""The queue service (QueueService) and its workers: the only owners of Redis.

Two backends behind one interface (`backend.QueueBackend`): Redis streams
through taskiq (production) and an in-process queue (embedded mode, when
REDIS_URL is empty).
"""
