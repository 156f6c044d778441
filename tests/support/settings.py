"""Settings for tests that start services in-process: each service's own
settings class, built from one flat set of values (the production loader's
checks included), as one environment would configure the whole stack."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.stack import SETTINGS, StackSettings
from shared.config import setting_names, with_values


def stack_settings_from(values: Mapping[str, Any]) -> StackSettings:
    """Every service's settings from `values` (each takes the fields it declares)."""
    known = set().union(*(setting_names(cls) for cls in SETTINGS.values()))
    unknown = sorted(set(values) - known)
    if unknown:  # a typo in a test would otherwise be silently ignored
        raise TypeError(f"no service has the settings {unknown}")
    return StackSettings(**{name: with_values(cls, values) for name, cls in SETTINGS.items()})
