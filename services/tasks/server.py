"""The gRPC surface of TaskService: parse the request, call the application,
map the result. Domain errors propagate to shared.grpc_server, which maps them
to status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from . import mapping
from .service import TaskApp

SERVICE_NAME = tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, app: TaskApp) -> None:
        self.app = app

    async def CreateTask(
        self, request: tasks_pb2.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CreateTaskResponse:
        task = await self.app.create(mapping.new_task_from_proto(request))
        return tasks_pb2.CreateTaskResponse(task=mapping.task_to_proto(task))

    async def BatchCreateTasks(
        self, request: tasks_pb2.BatchCreateTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.BatchCreateTasksResponse:
        tasks = await self.app.create_many(mapping.new_tasks_from_proto(request))
        return tasks_pb2.BatchCreateTasksResponse(
            tasks=[mapping.task_to_proto(task) for task in tasks]
        )

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTaskResponse:
        view = mapping.view_from_proto(request.view)
        task = await self.app.get(request.id, view)
        return tasks_pb2.GetTaskResponse(task=mapping.task_to_proto(task, view))

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse:
        page, token = await self.app.list_tasks(
            mapping.list_filter_from_proto(request), request.page_size, request.page_token
        )
        return tasks_pb2.ListTasksResponse(
            tasks=[mapping.task_to_proto(task) for task in page.tasks], next_page_token=token
        )

    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CancelTaskResponse:
        task = await self.app.cancel(request.id, request.reason)
        return tasks_pb2.CancelTaskResponse(task=mapping.task_to_proto(task))

    async def GetTaskStats(
        self, request: tasks_pb2.GetTaskStatsRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTaskStatsResponse:
        stats = await self.app.stats(
            mapping.time_from_proto(request.created_after, "created_after", request),
            mapping.time_from_proto(request.created_before, "created_before", request),
        )
        return mapping.stats_to_proto(stats)

    async def WatchTask(
        self, request: tasks_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.WatchTaskResponse]:
        async for task, event, last_event_id in self.app.watch(request.id, request.after_event_id):
            response = tasks_pb2.WatchTaskResponse(
                task=mapping.task_to_proto(task), last_event_id=last_event_id
            )
            if event is not None:
                response.event.CopyFrom(mapping.event_to_proto(event))
            yield response

    async def ListTaskEvents(
        self, request: tasks_pb2.ListTaskEventsRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTaskEventsResponse:
        events = await self.app.events(request.id)
        return tasks_pb2.ListTaskEventsResponse(
            events=[mapping.event_to_proto(event) for event in events]
        )
