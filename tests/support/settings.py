"""Every service's settings, typed, for tests: one flat set of values (or one
environment and file) as it would configure the whole stack, loaded into each
service's own settings class with the production loader's checks.

`make run` and `make check-config` (services/stack.py) ask each service
process for its settings instead; tests may import the services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.gateway.settings import GatewaySettings
from services.queue.settings import QueueSettings
from services.tasks.settings import TasksSettings
from services.verification.settings import VerificationSettings
from shared.config import (
    CommonSettings,
    ConfigError,
    check_known_keys,
    config_file_path,
    load_settings,
    setting_names,
    with_values,
)

# Each service's settings class, by the name of its process (workers are the queue's).
SETTINGS: dict[str, type[CommonSettings]] = {
    "tasks": TasksSettings,
    "queue": QueueSettings,
    "verification": VerificationSettings,
    "gateway": GatewaySettings,
}


@dataclass(frozen=True)
class StackSettings:
    """Every service's settings, loaded from one environment and file."""

    tasks: TasksSettings
    queue: QueueSettings
    verification: VerificationSettings
    gateway: GatewaySettings

    def masked(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).masked() for name in SETTINGS}


def load_stack_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> StackSettings:
    """Load and check every service's settings; a ConfigError names the service."""
    loaded: dict[str, Any] = {}
    for name, cls in SETTINGS.items():
        try:
            loaded[name] = load_settings(cls, env, config_file)
        except ConfigError as exc:
            raise ConfigError(f"{name}.{exc.field}", exc.message) from None
    known = set().union(*(setting_names(cls) for cls in SETTINGS.values()))
    check_known_keys(config_file_path(env, config_file), known)
    return StackSettings(**loaded)


def stack_settings_from(values: Mapping[str, Any]) -> StackSettings:
    """Every service's settings from `values` (each takes the fields it declares)."""
    known = set().union(*(setting_names(cls) for cls in SETTINGS.values()))
    unknown = sorted(set(values) - known)
    if unknown:  # a typo in a test would otherwise be silently ignored
        raise TypeError(f"no service has the settings {unknown}")
    return StackSettings(**{name: with_values(cls, values) for name, cls in SETTINGS.items()})
