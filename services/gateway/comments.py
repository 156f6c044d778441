"""Proto comments by fully qualified name, read from descriptors with source info.

The generated `_pb2` modules drop source info, so comments come from a
FileDescriptorSet: the one `make proto` writes beside the generated code
(shared/gen/descriptors.binpb, built with --include_source_info), or, when that
file is missing (an older generated tree), one compiled from protos/ now with
grpc_tools.protoc. Comments are documentation only: without them the gateway
still transcodes, the OpenAPI document just has no descriptions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

from shared.config import PROJECT_ROOT
from shared.log import get_logger

log = get_logger(__name__)

DESCRIPTOR_SET = PROJECT_ROOT / "shared" / "gen" / "descriptors.binpb"
PROTO_ROOT = PROJECT_ROOT / "protos"

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto
# field numbers, as used in SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def comments_from_descriptor_set(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> dict[str, str]:
    """Leading comments keyed by full name (messages, fields, enums, values, services, methods)."""
    comments: dict[str, str] = {}
    for file in descriptor_set.file:
        by_path = {
            tuple(location.path): location.leading_comments
            for location in file.source_code_info.location
            if location.leading_comments
        }
        package = file.package

        def note(
            name: str, path: tuple[int, ...], by_path: dict[tuple[int, ...], str] = by_path
        ) -> None:
            text = _clean(by_path.get(path, ""))
            if text:
                comments[name] = text

        def message(
            proto: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]
        ) -> None:
            name = f"{scope}.{proto.name}"
            note(name, path)
            for index, field in enumerate(proto.field):
                note(f"{name}.{field.name}", (*path, _MESSAGE_FIELD, index))
            for index, nested in enumerate(proto.nested_type):
                message(nested, name, (*path, _MESSAGE_NESTED, index))
            for index, nested_enum in enumerate(proto.enum_type):
                enum(nested_enum, name, (*path, _MESSAGE_ENUM, index))

        def enum(
            proto: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]
        ) -> None:
            name = f"{scope}.{proto.name}"
            note(name, path)
            for index, value in enumerate(proto.value):
                # Enum values are scoped beside their enum, but keyed under it here.
                note(f"{name}.{value.name}", (*path, _ENUM_VALUE, index))

        for index, proto in enumerate(file.message_type):
            message(proto, package, (_FILE_MESSAGE, index))
        for index, enum_proto in enumerate(file.enum_type):
            enum(enum_proto, package, (_FILE_ENUM, index))
        for index, service in enumerate(file.service):
            service_name = f"{package}.{service.name}"
            note(service_name, (_FILE_SERVICE, index))
            for method_index, method in enumerate(service.method):
                note(
                    f"{service_name}.{method.name}",
                    (_FILE_SERVICE, index, _SERVICE_METHOD, method_index),
                )
    return comments


def _clean(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return " ".join(line for line in lines if line)


def load_comments(
    descriptor_set_path: Path = DESCRIPTOR_SET, proto_root: Path = PROTO_ROOT
) -> dict[str, str]:
    """Comments from the generated descriptor set, else from protos/ compiled now."""
    try:
        data = descriptor_set_path.read_bytes()
    except OSError:
        data = _compile(proto_root)
    if not data:
        log.warning("gateway.no_proto_comments", looked_in=str(descriptor_set_path))
        return {}
    return comments_from_descriptor_set(descriptor_pb2.FileDescriptorSet.FromString(data))


def _compile(proto_root: Path) -> bytes:
    protos = sorted(str(path.relative_to(proto_root)) for path in proto_root.rglob("*.proto"))
    if not protos:
        return b""
    try:
        import google.api  # type: ignore[import-untyped]
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        return b""
    import importlib.resources

    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "descriptors.binpb")
        code = _run_protoc(
            protoc,
            [
                "protoc",
                f"-I{proto_root}",
                f"-I{googleapis}",
                f"-I{well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *protos,
            ],
        )
        if code != 0:
            return b""
        return Path(out).read_bytes()


def _run_protoc(protoc: object, args: Sequence[str]) -> int:
    return int(protoc.main(list(args)))  # type: ignore[attr-defined]
