"""The apps application: validated calls over the app store, the task store and
the scheduler. No grpc here; apps_server.py maps protos to these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from shared.errors import FailedPrecondition, InvalidArgument
from shared.log import get_logger

from . import apps as domain
from . import validation
from .apps import App, AppFilter, AppSource, AppState
from .apps_store import AppStore
from .apps_sync import AppSync, SyncResult
from .model import ListFilter, ListQuery, Task, TaskPage, TaskStatus
from .paging import next_page_token, page_query
from .scheduler import Scheduler
from .store import TaskStore

log = get_logger(__name__)


def _app_id(value: str, field: str = "id") -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return validation.validate_app_id(value, field)


class AppsApp:
    def __init__(
        self,
        apps: AppStore,
        tasks: TaskStore,
        scheduler: Scheduler,
        sync: AppSync,
        clock: Callable[[], datetime],
    ) -> None:
        self.apps = apps
        self.tasks = tasks
        self.scheduler = scheduler
        self.sync = sync
        self.clock = clock

    async def create(self, app: App) -> App:
        now = self.clock()
        app = domain.validate_app(
            replace(
                app,
                schedule_paused=False,
                source=AppSource.API,
                created_at=now,
                updated_at=now,
                latest=None,
            )
        )
        created = await self.apps.insert(app)
        log.info("app.created", app_id=app.id)
        return created

    async def get(self, app_id: str) -> tuple[App, Task | None]:
        """The app and its trust status: its latest completed task, else latest failed."""
        app = await self.apps.get(_app_id(app_id))
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            page = await self.tasks.list_tasks(
                ListQuery(ListFilter(status=status, app_id=app.id), page_size=1, after=None)
            )
            if page.tasks:
                return app, page.tasks[0]
        return app, None

    async def list(
        self, app_filter: AppFilter, page_size: int, token: str
    ) -> tuple[list[App], str]:
        size = validation.validate_page_size(page_size)
        after = domain.decode_page_token(token, app_filter)
        page = await self.apps.list_apps(app_filter, after, size + 1)
        more = len(page) > size
        page = page[:size]
        return page, domain.encode_page_token(page[-1].id, app_filter) if more else ""

    async def update(self, given: App, paths: frozenset[str]) -> App:
        current = await self.apps.get(_app_id(given.id))
        updated = domain.apply_update(current, given, paths, self.clock())
        return await self.apps.save(updated)

    async def delete(self, app_id: str) -> App:
        app = await self.apps.get(_app_id(app_id))
        if app.state is AppState.DELETED:
            return app
        return await self.apps.save(replace(app, state=AppState.DELETED, updated_at=self.clock()))

    async def history(
        self, app_id: str, status: TaskStatus | None, page_size: int, token: str
    ) -> tuple[TaskPage, str]:
        app = await self.apps.get(_app_id(app_id))
        list_filter = ListFilter(status=status, app_id=app.id)
        page = await self.tasks.list_tasks(page_query(list_filter, page_size, token))
        return page, next_page_token(page, list_filter)

    async def set_paused(self, app_id: str, paused: bool) -> App:
        app = await self.apps.get(_app_id(app_id))
        if app.schedule_paused == paused:
            return app
        log.info("app.schedule_paused" if paused else "app.schedule_resumed", app_id=app.id)
        return await self.apps.save(replace(app, schedule_paused=paused, updated_at=self.clock()))

    async def trigger(self, app_id: str) -> Task:
        app = await self.apps.get(_app_id(app_id))
        if app.state is AppState.DELETED:
            raise FailedPrecondition(f"app {app.id!r} is deleted; update its state first")
        task = await self.scheduler.trigger(app)
        log.info("app.triggered", app_id=app.id, task_id=task.id)
        return task

    async def sync_now(self) -> SyncResult:
        return await self.sync.run_once()

    def next_run(self, app: App) -> datetime | None:
        return domain.next_run(app, self.clock())
