"""OsImageService's gRPC surface: map protos to entries and back, call the
use cases. Domain errors are mapped to status codes by the shared bootstrap."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from verifier.verification.v1 import os_images_pb2 as pb
from verifier.verification.v1 import os_images_pb2_grpc

from .errors import EvidenceMalformed
from .os_images import REGISTERS, SHAPE_FIELDS, OsImageEntry, entry_from_dict
from .os_images_service import ListedImage, OsImageCatalogService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OsImageService"].full_name

_SOURCES = {
    "dstack-mr": pb.OS_IMAGE_SOURCE_DSTACK_MR,
    "observed": pb.OS_IMAGE_SOURCE_OBSERVED,
    "imported": pb.OS_IMAGE_SOURCE_IMPORTED,
}
_SOURCE_NAMES = {v: k for k, v in _SOURCES.items()} | {pb.OS_IMAGE_SOURCE_UNSPECIFIED: "imported"}


def entry_from_proto(message: pb.OsImage) -> OsImageEntry:
    source = _SOURCE_NAMES.get(message.source)
    if source is None:
        raise EvidenceMalformed("os_image.source", f"unknown value {message.source}")
    doc: dict[str, Any] = {
        "os_image_hash": message.os_image_hash,
        "version": message.version,
        "dev": message.dev,
        "source": source,
        "source_detail": message.source_detail,
        "measurements": [
            {
                "vm_shape": {
                    name: getattr(m.vm_shape, name)
                    for name in SHAPE_FIELDS
                    if m.vm_shape.HasField(name)  # type: ignore[arg-type]
                },
            }
            | {r: getattr(m, r) for r in REGISTERS}
            for m in message.measurements
        ],
    }
    if message.HasField("recorded_at"):
        doc["recorded_at"] = message.recorded_at.ToDatetime().isoformat() + "Z"
    return entry_from_dict(doc, "os_image")


def entry_to_proto(listed: ListedImage) -> pb.OsImage:
    entry = listed.entry
    recorded_at = timestamp_pb2.Timestamp()
    recorded_at.FromDatetime(entry.recorded_at)
    return pb.OsImage(
        os_image_hash=entry.os_image_hash,
        version=entry.version,
        dev=entry.dev,
        source=_SOURCES[entry.source],
        source_detail=entry.source_detail,
        recorded_at=recorded_at,
        measurements=[
            pb.OsMeasurement(
                vm_shape=pb.VmShape(
                    **{k: v for k, v in m.vm_shape.items() if v is not None}  # type: ignore[arg-type]
                ),
                mrtd=m.mrtd,
                rtmr0=m.rtmr0,
                rtmr1=m.rtmr1,
                rtmr2=m.rtmr2,
            )
            for m in entry.measurements
        ],
        read_only=listed.read_only,
    )


class OsImageServicer(os_images_pb2_grpc.OsImageServiceServicer):
    def __init__(self, service: OsImageCatalogService) -> None:
        self.service = service

    async def ListOsImages(
        self, request: pb.ListOsImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOsImagesResponse:
        page, token = await self.service.list(request.page_size, request.page_token)
        return pb.ListOsImagesResponse(
            os_images=[entry_to_proto(item) for item in page], next_page_token=token
        )

    async def GetOsImage(
        self, request: pb.GetOsImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOsImageResponse:
        return pb.GetOsImageResponse(
            os_image=entry_to_proto(await self.service.get(request.os_image_hash))
        )

    async def CreateOsImage(
        self, request: pb.CreateOsImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOsImageResponse:
        if not request.HasField("os_image"):
            raise EvidenceMalformed("os_image", "is required")
        created = await self.service.create(entry_from_proto(request.os_image))
        return pb.CreateOsImageResponse(os_image=entry_to_proto(created))

    async def DeleteOsImage(
        self, request: pb.DeleteOsImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteOsImageResponse:
        await self.service.delete(request.os_image_hash)
        return pb.DeleteOsImageResponse()
