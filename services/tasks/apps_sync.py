"""Pulling the app list from the Phala Cloud API (the reference's `sync-apps`).

GET {PHALA_CLOUD_API_URL}/stats/dstack_app with `Authorization: Bearer
PHALA_CLOUD_API_KEY` answers `{"data": [...]}` (or the bare list), one object per
app in the shape of trust-center's UpstreamAppDataSchema (dstack_app_id,
app_name, base_image, contract_address, gateway_domain_suffix, ...). Each one is
upserted as a phala_cloud app; apps that disappear from the list are marked
deleted, never removed (their history stays).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx

from shared.errors import FailedPrecondition, Unavailable
from shared.log import get_logger

from .apps import App, AppSource, AppState, Schedule, validate_app
from .apps_store import AppExists, AppNotFound, AppStore
from .model import AppConfigType, VerificationFlags

log = get_logger(__name__)
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?$")


@dataclass(frozen=True)
class SyncResult:
    listed: int
    created: int
    updated: int
    deleted: int


def _version(base_image: str) -> tuple[int, int, int, int]:
    found = _VERSION.search(base_image or "")
    if not found:
        return (0, 0, 0, 0)
    return tuple(int(part or 0) for part in found.groups())  # type: ignore[return-value]


def parse_upstream(item: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(app id, name, contract address, domain) as trust-center derives them: dstack
    0.5.3+ apps are their own contract (0x + app id) behind the gateway's suffix."""
    app_id = str(item.get("dstack_app_id") or "").lower()
    if not app_id:
        raise ValueError("dstack_app_id missing")
    base = _version(str(item.get("base_image") or ""))
    contract = f"0x{app_id}"
    if base < (0, 5, 3):
        contract = str(item.get("contract_address") or "") if base >= (0, 5, 1) else ""
        contract = contract or f"0x{app_id}"
    domain = (
        item.get("gateway_domain_suffix") if base >= (0, 5, 3) else item.get("tproxy_base_domain")
    )
    return app_id, str(item.get("app_name") or "")[:256], contract.lower(), str(domain or "")


class PhalaCloudApps:
    """The Phala Cloud API client (httpx)."""

    def __init__(self, base_url: str, api_key: str, timeout_seconds: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + "/stats/dstack_app"
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds

    async def fetch(self) -> list[Mapping[str, Any]]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.get(
                    self.url, headers={"Authorization": f"Bearer {self.api_key}"}
                )
        except httpx.HTTPError as exc:
            raise Unavailable(f"Phala Cloud apps API: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise Unavailable(f"Phala Cloud apps API answered HTTP {response.status_code}")
        body = response.json()
        data = body.get("data", body) if isinstance(body, dict) else body
        if not isinstance(data, list):
            raise Unavailable("Phala Cloud apps API: expected a list of apps")
        return [item for item in data if isinstance(item, dict)]


class AppSync:
    def __init__(
        self,
        store: AppStore,
        source: PhalaCloudApps | None,
        clock: Callable[[], datetime],
        interval_seconds: float = 3600.0,
    ) -> None:
        self.store = store
        self.source = source
        self.clock = clock
        self.interval_seconds = interval_seconds
        # One sync at a time in this process (the periodic one and SyncApps).
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        while True:
            try:
                result = await self.run_once()
                log.info("apps.synced", **result.__dict__)
            except Exception as exc:
                log.warning("apps.sync_failed", error=str(exc))
            await asyncio.sleep(self.interval_seconds)

    async def run_once(self) -> SyncResult:
        if self.source is None:
            raise FailedPrecondition("app sync is off: PHALA_CLOUD_API_KEY is not set")
        async with self._lock:
            return await self._sync(self.source)

    async def _sync(self, source: PhalaCloudApps) -> SyncResult:
        items = await source.fetch()
        now = self.clock()
        seen: set[str] = set()
        created = updated = 0
        for item in items:
            try:
                app_id, name, contract, domain = parse_upstream(item)
            except ValueError as exc:
                log.warning("apps.sync_skipped", error=str(exc))
                continue
            seen.add(app_id)
            change = await self._upsert(app_id, name, contract, domain, now)
            created += change == "created"
            updated += change == "updated"
        gone = sorted(await self.store.all_ids(AppSource.PHALA_CLOUD) - seen)
        deleted = await self.store.mark_deleted(gone, now)
        return SyncResult(len(items), created, updated, deleted)

    async def _upsert(
        self, app_id: str, name: str, contract: str, domain: str, now: datetime
    ) -> str:
        try:
            current = await self.store.get(app_id)
        except AppNotFound:
            try:
                app = validate_app(
                    App(
                        id=app_id,
                        name=name,
                        app_config_type=AppConfigType.PHALA_CLOUD,
                        contract_address=contract,
                        model_or_domain=domain,
                        verification_flags=VerificationFlags(),
                        expected_compose_hash="",
                        schedule=Schedule(),
                        state=AppState.ENABLED,
                        schedule_paused=False,
                        source=AppSource.PHALA_CLOUD,
                        created_at=now,
                        updated_at=now,
                    )
                )
            except Exception as exc:  # an upstream record we cannot schedule
                log.warning("apps.sync_invalid", app_id=app_id[:64], error=str(exc))
                return "skipped"
            try:
                await self.store.insert(app)
            except AppExists:  # another replica's sync inserted it meanwhile
                return "kept"
            return "created"
        if current.source is not AppSource.PHALA_CLOUD:
            return "kept"  # registered by an operator: theirs wins
        wanted = replace(
            current,
            name=name,
            contract_address=contract,
            model_or_domain=domain,
            # Listed again after it had disappeared: schedule it again.
            state=AppState.ENABLED if current.state is AppState.DELETED else current.state,
        )
        if wanted == current:
            return "unchanged"
        await self.store.save(replace(wanted, updated_at=now))
        return "updated"
