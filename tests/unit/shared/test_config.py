"""Configuration: one loader (environment over TOML over defaults, validation
naming the field) and each service's own settings class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.gateway.settings import GatewaySettings
from services.queue.settings import QueueSettings
from services.tasks.settings import TasksSettings, database_url
from services.verification.settings import VerificationSettings
from shared.config import MASK, CommonSettings, ConfigError, load_settings, mask_url
from tests.support.settings import SETTINGS, load_stack_settings

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_are_the_reference_values() -> None:
    stack = load_stack_settings(env={})
    assert stack.queue.queue_name == "verification-queue"
    assert stack.queue.queue_concurrency == 5
    assert stack.gateway.port == 3000
    assert stack.tasks.tasks_listen_addr.endswith(":50051")
    assert stack.queue.queue_listen_addr.endswith(":50052")
    assert stack.verification.verification_listen_addr.endswith(":50053")
    assert stack.tasks.embedded_database
    assert stack.tasks.effective_database_url.startswith("sqlite:///")


def test_every_service_declares_its_own_settings_on_the_common_ones() -> None:
    assert set(SETTINGS) == {"tasks", "queue", "verification", "gateway"}
    for cls in SETTINGS.values():
        assert issubclass(cls, CommonSettings)
    # The library's own class knows no service's settings.
    common = {f for f in CommonSettings.__dataclass_fields__}
    assert "database_url" not in common and "redis_url" not in common


def test_each_setting_is_declared_by_one_service_only() -> None:
    common = set(CommonSettings.__dataclass_fields__)
    owners: dict[str, list[str]] = {}
    for name, cls in SETTINGS.items():
        for field_name in set(cls.__dataclass_fields__) - common:
            owners.setdefault(field_name, []).append(name)
    assert {name: who for name, who in owners.items() if len(who) > 1} == {}


def test_environment_overrides_toml_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "verifier.toml"
    config.write_text('queue_name = "from-file"\nqueue_concurrency = 7\n[s3]\nbucket = "b-file"\n')
    queue = load_settings(QueueSettings, env={"QUEUE_CONCURRENCY": "9"}, config_file=config)
    assert queue.queue_name == "from-file"
    assert queue.queue_concurrency == 9
    verification = load_settings(VerificationSettings, env={}, config_file=config)
    assert verification.s3_bucket == "b-file"


@pytest.mark.parametrize(
    ("url", "form", "expected"),
    [
        ("postgresql://u:p@db:5432/v", "sync", "postgresql+psycopg://u:p@db:5432/v"),
        ("postgres://u:p@db/v", "async", "postgresql+psycopg://u:p@db/v"),
        ("postgresql+psycopg://u@db/v", "libpq", "postgresql://u@db/v"),
        ("postgres://u@db/v", "libpq", "postgresql://u@db/v"),
        ("sqlite:////data/tasks.db", "async", "sqlite+aiosqlite:////data/tasks.db"),
        ("sqlite+aiosqlite:////data/tasks.db", "sync", "sqlite:////data/tasks.db"),
    ],
)
def test_database_url_is_derived_in_one_place(url: str, form: str, expected: str) -> None:
    assert database_url(url, form) == expected  # type: ignore[arg-type]


def test_postgres_url_is_driven_through_psycopg() -> None:
    settings = load_settings(TasksSettings, env={"DATABASE_URL": "postgresql://u:p@db:5432/v"})
    assert settings.effective_database_url == "postgresql+psycopg://u:p@db:5432/v"
    assert not settings.embedded_database


@pytest.mark.parametrize(
    ("cls", "env", "field"),
    [
        (QueueSettings, {"QUEUE_CONCURRENCY": "many"}, "queue_concurrency"),
        (QueueSettings, {"QUEUE_CONCURRENCY": "0"}, "queue_concurrency"),
        (GatewaySettings, {"PORT": "70000"}, "port"),
        (TasksSettings, {"DATABASE_URL": "mysql://x"}, "database_url"),
        (TasksSettings, {"TASKS_ADDR": "nohost"}, "tasks_addr"),
        (TasksSettings, {"MIGRATE_ON_START": "perhaps"}, "migrate_on_start"),
        (GatewaySettings, {"LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_invalid_value_names_the_field(
    cls: type[CommonSettings], env: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(cls, env=env)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_queue_timing_rule_is_checked_at_load_time() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            QueueSettings, env={"WORKER_HEARTBEAT_SECONDS": "5", "JOB_IDLE_TIMEOUT_SECONDS": "6"}
        )
    assert caught.value.field == "job_idle_timeout_seconds"
    with pytest.raises(ConfigError) as offline:
        load_settings(QueueSettings, env={"WORKER_OFFLINE_AFTER_SECONDS": "1"})
    assert offline.value.field == "worker_offline_after_seconds"


@pytest.mark.parametrize(
    "origins",
    ["https://app.example/", "app.example", "*,https://app.example", "https://u:p@app.example"],
)
def test_cors_origins_that_can_never_match_are_refused(origins: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(GatewaySettings, env={"CORS_ALLOW_ORIGINS": origins})
    assert caught.value.field == "cors_allow_origins"


def test_cors_origins_as_browsers_send_them_are_accepted() -> None:
    settings = load_settings(
        GatewaySettings, env={"CORS_ALLOW_ORIGINS": "https://app.example, http://localhost:5173"}
    )
    assert settings.cors_allow_origins == ("https://app.example", "http://localhost:5173")
    assert load_settings(GatewaySettings, env={"CORS_ALLOW_ORIGINS": "*"}).cors_allow_origins == (
        "*",
    )


def test_allowed_tcb_statuses_must_be_statuses_intel_reports() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(VerificationSettings, env={"ALLOWED_TCB_STATUSES": "UpToDate,UptoDate"})
    assert caught.value.field == "allowed_tcb_statuses"
    assert "UptoDate" in caught.value.message
    allowed = load_settings(
        VerificationSettings, env={"ALLOWED_TCB_STATUSES": "UpToDate,SWHardeningNeeded"}
    )
    assert allowed.allowed_tcb_statuses == ("UpToDate", "SWHardeningNeeded")


def test_a_service_reads_only_its_keys_and_the_stack_refuses_unknown_ones(
    tmp_path: Path,
) -> None:
    config = tmp_path / "stack.toml"
    config.write_text("queue_name = 'q'\ndatabase_pool_size = 3\n")
    # A key of another service is not an error for one service...
    assert load_settings(QueueSettings, env={}, config_file=config).queue_name == "q"
    assert load_stack_settings(env={}, config_file=config).tasks.database_pool_size == 3
    # ...but a key no service declares (a typo) is, for the stack and a strict load.
    config.write_text("queue_nmae = 'typo'\n")
    with pytest.raises(ConfigError) as caught:
        load_stack_settings(env={}, config_file=config)
    assert caught.value.field == "queue_nmae"
    with pytest.raises(ConfigError):
        load_settings(QueueSettings, env={}, config_file=config, strict=True)


def test_a_stack_error_names_the_service_and_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        load_stack_settings(env={"QUEUE_CONCURRENCY": "-1"})
    assert caught.value.field == "queue.queue_concurrency"


def test_masked_hides_secrets_and_url_passwords() -> None:
    env = {
        "S3_SECRET_ACCESS_KEY": "topsecret",
        "S3_ACCESS_KEY_ID": "AKIA123",
        "DATABASE_URL": "postgresql://user:hunter2@db/verifier",
        "REDIS_URL": "redis://:redispass@cache:6379/0",
        "REDPILL_API_KEY": "sk-redpill",
        "ETH_RPC_URL": "https://user:rpcpass@rpc.example/v1",
    }
    masked = load_stack_settings(env=env).masked()
    text = json.dumps(masked)
    for secret in ("topsecret", "AKIA123", "hunter2", "redispass", "sk-redpill", "rpcpass"):
        assert secret not in text
    assert masked["verification"]["s3_secret_access_key"] == MASK
    assert masked["tasks"]["database_url"] == f"postgresql://user:{MASK}@db/verifier"


def test_mask_url_keeps_urls_without_password() -> None:
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--check-config"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        # Every service process imports its whole package: slow on a loaded machine.
        timeout=240,
    )


def test_check_config_prints_every_service_masked() -> None:
    result = _run("services.stack", {"S3_SECRET_ACCESS_KEY": "topsecret", "QUEUE_NAME": "q1"})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == set(SETTINGS)
    assert printed["queue"]["queue_name"] == "q1"
    assert printed["verification"]["s3_secret_access_key"] == MASK
    assert "topsecret" not in result.stdout + result.stderr


def test_check_config_exits_non_zero_naming_the_field() -> None:
    result = _run("services.stack", {"QUEUE_CONCURRENCY": "-3"})
    assert result.returncode == 2
    assert "queue_concurrency" in result.stderr


def test_a_service_check_config_applies_the_rules_of_its_settings() -> None:
    result = _run(
        "services.queue.worker",
        {"WORKER_HEARTBEAT_SECONDS": "5", "JOB_IDLE_TIMEOUT_SECONDS": "6"},
    )
    assert result.returncode == 2
    assert "job_idle_timeout_seconds" in result.stderr
    ok = _run("services.gateway", {"CORS_ALLOW_ORIGINS": "https://app.example"})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["cors_allow_origins"] == ["https://app.example"]
