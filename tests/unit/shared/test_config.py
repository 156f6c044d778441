"""Configuration: environment over TOML over defaults, validation naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import MASK, ConfigError, load_settings, mask_url

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_are_the_reference_values() -> None:
    settings = load_settings(env={})
    assert settings.queue_name == "verification-queue"
    assert settings.queue_concurrency == 5
    assert settings.port == 3000
    assert settings.tasks_listen_addr.endswith(":50051")
    assert settings.queue_listen_addr.endswith(":50052")
    assert settings.verification_listen_addr.endswith(":50053")
    assert settings.embedded_database
    assert settings.effective_database_url.startswith("sqlite:///")


def test_environment_overrides_toml_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "verifier.toml"
    config.write_text('queue_name = "from-file"\nqueue_concurrency = 7\n[s3]\nbucket = "b-file"\n')
    settings = load_settings(env={"QUEUE_CONCURRENCY": "9"}, config_file=config)
    assert settings.queue_name == "from-file"
    assert settings.queue_concurrency == 9
    assert settings.s3_bucket == "b-file"


def test_postgres_url_is_driven_through_psycopg() -> None:
    settings = load_settings(env={"DATABASE_URL": "postgresql://u:p@db:5432/verifier"})
    assert settings.effective_database_url == "postgresql+psycopg://u:p@db:5432/verifier"
    assert not settings.embedded_database


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"QUEUE_CONCURRENCY": "many"}, "queue_concurrency"),
        ({"QUEUE_CONCURRENCY": "0"}, "queue_concurrency"),
        ({"PORT": "70000"}, "port"),
        ({"DATABASE_URL": "mysql://x"}, "database_url"),
        ({"TASKS_ADDR": "nohost"}, "tasks_addr"),
        ({"MIGRATE_ON_START": "perhaps"}, "migrate_on_start"),
        ({"LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_invalid_value_names_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("queue_nmae = 'typo'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=config)
    assert caught.value.field == "queue_nmae"


def test_masked_hides_secrets_and_url_passwords() -> None:
    settings = load_settings(
        env={
            "S3_SECRET_ACCESS_KEY": "topsecret",
            "S3_ACCESS_KEY_ID": "AKIA123",
            "DATABASE_URL": "postgresql://user:hunter2@db/verifier",
            "REDIS_URL": "redis://:redispass@cache:6379/0",
        }
    )
    masked = settings.masked()
    text = json.dumps(masked)
    for secret in ("topsecret", "AKIA123", "hunter2", "redispass"):
        assert secret not in text
    assert masked["s3_secret_access_key"] == MASK
    assert masked["database_url"] == f"postgresql://user:{MASK}@db/verifier"


def test_mask_url_keeps_urls_without_password() -> None:
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def _check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.config", "--check-config"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_prints_effective_configuration_masked() -> None:
    result = _check_config({"S3_SECRET_ACCESS_KEY": "topsecret", "QUEUE_NAME": "q1"})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["queue_name"] == "q1"
    assert printed["s3_secret_access_key"] == MASK
    assert "topsecret" not in result.stdout + result.stderr


def test_check_config_exits_non_zero_naming_the_field() -> None:
    result = _check_config({"QUEUE_CONCURRENCY": "-3"})
    assert result.returncode == 2
    assert "queue_concurrency" in result.stderr
