"""The test-only ThingService contract (protos/gatewaytest/v1/things.proto),
compiled once per session with grpc_tools.protoc, as the gateway would see a
service added later: generated modules plus a descriptor set with comments."""

from __future__ import annotations

import importlib
import importlib.resources
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

import google.api
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import ServiceDescriptor
from grpc_tools import protoc  # type: ignore[import-untyped]

from services.gateway.comments import comments_from_descriptor_set

PROTO_ROOT = Path(__file__).resolve().parent / "protos"
PROTO = "gatewaytest/v1/things.proto"


@cache
def compiled() -> tuple[ModuleType, dict[str, str]]:
    """(the things_pb2 module, its comments)."""
    out = Path(tempfile.mkdtemp(prefix="gatewaytest-gen-"))
    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    descriptor_set = out / "things.binpb"
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{googleapis}",
            f"-I{well_known}",
            f"--python_out={out}",
            "--include_source_info",
            f"--descriptor_set_out={descriptor_set}",
            PROTO,
        ]
    )
    assert code == 0, "protoc failed on the test contract"
    for folder in (out / "gatewaytest", out / "gatewaytest" / "v1"):
        (folder / "__init__.py").touch()
    sys.path.insert(0, str(out))
    module = importlib.import_module("gatewaytest.v1.things_pb2")
    comments = comments_from_descriptor_set(
        descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    )
    return module, comments


def thing_service() -> ServiceDescriptor:
    module, _ = compiled()
    service: ServiceDescriptor = module.DESCRIPTOR.services_by_name["ThingService"]
    return service
