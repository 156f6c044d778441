"""Settings of the queue service and its workers (loaded by shared.config:
environment over TOML over defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import CommonSettings, ConfigError, listen, optional_listen, positive, url

from . import policy


@dataclass(frozen=True)
class QueueSettings(CommonSettings):
    """What QueueService and the queue workers are configured with."""

    # Redis URL. Empty: the embedded in-process queue.
    redis_url: str = url("", "redis", "rediss", secret_url=True)
    queue_name: str = "verification-queue"
    # Jobs one worker runs at once.
    queue_concurrency: int = positive(5)
    queue_listen_addr: str = listen("127.0.0.1:50052")
    # Prometheus /metrics of the service and of a worker process (empty: none).
    queue_metrics_listen_addr: str = optional_listen("0.0.0.0:9452")
    worker_metrics_listen_addr: str = optional_listen("")
    # A job that meets transient faults (a dependency down) is retried with a
    # capped, jittered backoff from retry_base_seconds for this long, counted
    # from its first fault, and only then fails its task.
    retry_budget_seconds: float = positive(600.0)
    retry_base_seconds: float = positive(1.0)
    worker_heartbeat_seconds: float = positive(2.0)
    worker_offline_after_seconds: float = positive(15.0)
    # A job not acknowledged for this long is delivered to another worker. A
    # live worker re-claims its jobs every heartbeat, so only a dead (or stalled)
    # one's jobs get this idle: just past worker_offline_after_seconds, a killed
    # worker's jobs move on once ListWorkers shows it offline.
    job_idle_timeout_seconds: float = positive(20.0)
    # Jobs the Redis stream may hold; EnqueueTask answers RESOURCE_EXHAUSTED beyond.
    queue_max_length: int = positive(1_000_000)
    # Offline workers are dropped from ListWorkers after this long.
    worker_forget_after_seconds: float = positive(600.0)
    # Deadline of a worker's VerificationService.Verify call (evidence fetches included).
    verify_timeout_seconds: float = positive(120.0)

    def validate(self) -> None:
        super().validate()
        problem = policy.timing_problem(
            self.worker_heartbeat_seconds,
            self.job_idle_timeout_seconds,
            self.worker_offline_after_seconds,
        )
        if problem is not None:
            raise ConfigError(*problem)
