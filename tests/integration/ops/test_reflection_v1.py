"""Server reflection answers on v1 as on v1alpha: the same services listed, and the
v1 reflection service itself describable (tools that speak only v1 work)."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2

from shared.grpc_server import ServiceSpec, start_server

QUEUE_SERVICE = "verifier.queue.v1.QueueService"


async def _ask(
    channel: grpc.aio.Channel, service: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [response async for response in call(iter(requests))]


async def test_v1_and_v1alpha_list_the_same_services_and_describe_v1() -> None:
    running = await start_server(
        ServiceSpec(
            name="reflection-test",
            service_names=[QUEUE_SERVICE],
            register=lambda server: None,
            listen_addr="127.0.0.1:0",
            health_probe_interval_seconds=60,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            listed = {}
            for service in (
                "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection",
            ):
                (response,) = await _ask(
                    channel, service, reflection_pb2.ServerReflectionRequest(list_services="")
                )
                listed[service] = {s.name for s in response.list_services_response.service}
            assert (
                listed["grpc.reflection.v1.ServerReflection"]
                == listed["grpc.reflection.v1alpha.ServerReflection"]
            )
            assert {QUEUE_SERVICE, "grpc.reflection.v1.ServerReflection"} <= listed[
                "grpc.reflection.v1.ServerReflection"
            ]
            (described,) = await _ask(
                channel,
                "grpc.reflection.v1.ServerReflection",
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
            )
            assert not described.HasField("error_response")
            from google.protobuf import descriptor_pb2

            (raw,) = described.file_descriptor_response.file_descriptor_proto
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            assert file.package == "grpc.reflection.v1"
            (method,) = file.service[0].method
            assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    finally:
        await running.stop(0.1)
