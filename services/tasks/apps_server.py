"""The gRPC surface of AppService: parse, call the apps application, map the result."""

from __future__ import annotations

from dataclasses import replace

import grpc
from verifier.tasks.v1 import apps_pb2, apps_pb2_grpc

from shared.errors import InvalidArgument

from . import apps_mapping, mapping
from .apps import App, AppFilter, AppState
from .apps_service import AppsApp

SERVICE_NAME = apps_pb2.DESCRIPTOR.services_by_name["AppService"].full_name


class AppServicer(apps_pb2_grpc.AppServiceServicer):
    def __init__(self, app: AppsApp) -> None:
        self.app = app

    def _proto(self, app: App) -> apps_pb2.App:
        return apps_mapping.app_to_proto(app, self.app.next_run(app))

    async def CreateApp(
        self, request: apps_pb2.CreateAppRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.CreateAppResponse:
        given, _ = apps_mapping.app_from_proto(request.app)
        return apps_pb2.CreateAppResponse(app=self._proto(await self.app.create(given)))

    async def GetApp(
        self, request: apps_pb2.GetAppRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.GetAppResponse:
        app, trust = await self.app.get(request.id)
        response = apps_pb2.GetAppResponse(app=self._proto(app))
        if trust is not None:
            response.trust_task.CopyFrom(mapping.task_to_proto(trust))
        return response

    async def ListApps(
        self, request: apps_pb2.ListAppsRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ListAppsResponse:
        page, token = await self.app.list(
            apps_mapping.filter_from_proto(request), request.page_size, request.page_token
        )
        return apps_pb2.ListAppsResponse(
            apps=[self._proto(app) for app in page], next_page_token=token
        )

    async def UpdateApp(
        self, request: apps_pb2.UpdateAppRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.UpdateAppResponse:
        if request.app.id and request.app.id != request.id:
            raise InvalidArgument("app.id", "must be the id of the path (or unset)")
        given, unset = apps_mapping.app_from_proto(request.app, for_update=True)
        given = replace(given, id=request.id)
        paths = apps_mapping.update_paths(list(request.update_mask.paths), unset)
        return apps_pb2.UpdateAppResponse(app=self._proto(await self.app.update(given, paths)))

    async def DeleteApp(
        self, request: apps_pb2.DeleteAppRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.DeleteAppResponse:
        return apps_pb2.DeleteAppResponse(app=self._proto(await self.app.delete(request.id)))

    async def ListAppTasks(
        self, request: apps_pb2.ListAppTasksRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ListAppTasksResponse:
        page, token = await self.app.history(
            request.id,
            mapping.status_from_proto(request.status),
            request.page_size,
            request.page_token,
        )
        return apps_pb2.ListAppTasksResponse(
            tasks=[mapping.task_to_proto(task) for task in page.tasks], next_page_token=token
        )

    async def ListSchedules(
        self, request: apps_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ListSchedulesResponse:
        page, token = await self.app.list(
            AppFilter(state=AppState.ENABLED), request.page_size, request.page_token
        )
        return apps_pb2.ListSchedulesResponse(
            apps=[self._proto(app) for app in page], next_page_token=token
        )

    async def PauseSchedule(
        self, request: apps_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.PauseScheduleResponse:
        app = await self.app.set_paused(request.id, True)
        return apps_pb2.PauseScheduleResponse(app=self._proto(app))

    async def ResumeSchedule(
        self, request: apps_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ResumeScheduleResponse:
        app = await self.app.set_paused(request.id, False)
        return apps_pb2.ResumeScheduleResponse(app=self._proto(app))

    async def TriggerSchedule(
        self, request: apps_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.TriggerScheduleResponse:
        task = await self.app.trigger(request.id)
        return apps_pb2.TriggerScheduleResponse(task=mapping.task_to_proto(task))

    async def SyncApps(
        self, request: apps_pb2.SyncAppsRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.SyncAppsResponse:
        result = await self.app.sync_now()
        return apps_pb2.SyncAppsResponse(
            created=result.created,
            updated=result.updated,
            deleted=result.deleted,
            listed=result.listed,
        )
