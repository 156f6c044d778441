"""The gateway's route table, discovered from the generated descriptors.

Every `*_pb2` module under the `verifier` package is imported; each service
with at least one `google.api.http` rule contributes routes. A service's gRPC
target comes from its package (`verifier.<name>.v1` -> settings `<name>_addr`),
so a new annotated RPC, or a new service with a `<name>_addr` setting, is
served without a change here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.gateway.errors import RouteConfigError
from services.gateway.pathtemplate import PathTemplate, parse_template
from shared.log import get_logger

log = get_logger(__name__)

ROOT_PACKAGE = "verifier"
_VERSION = re.compile(r"^v\d+([a-z]+\d*)?$")
_HTTP_PATTERNS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Rpc:
    """One gRPC method and where it is served."""

    service: ServiceDescriptor
    method: MethodDescriptor
    # Key of the upstream (e.g. "tasks"): picks the channel.
    target: str
    request_class: type[Message]
    response_class: type[Message]

    @property
    def path(self) -> str:
        """The gRPC method path, /package.Service/Method."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        return f"{self.service.name}_{self.method.name}"


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP binding of an RPC (a method has one, plus any additional_bindings)."""

    rpc: Rpc
    http_method: str
    template: PathTemplate
    # "" (no body), "*" (the whole request) or a top-level request field name.
    body: str
    # "" (the whole response) or a top-level response field name.
    response_body: str
    # Request fields bound by the path, as field-name tuples.
    path_fields: tuple[tuple[str, ...], ...] = field(default=())
    # 0 for the rule itself, 1.. for its additional_bindings.
    binding: int = 0

    @property
    def operation_id(self) -> str:
        """Unique per binding: TaskService_GetTask, then ..._2 for an additional binding."""
        suffix = f"_{self.binding + 1}" if self.binding else ""
        return f"{self.rpc.operation_id}{suffix}"


def import_generated_modules(root_package: str = ROOT_PACKAGE) -> list[Any]:
    """Import every generated `*_pb2` module under the package (fills the default pool)."""
    package = importlib.import_module(root_package)
    modules = []
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{root_package}."):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(info.name))
    return modules


def discover_services(root_package: str = ROOT_PACKAGE) -> list[ServiceDescriptor]:
    """Every service declared in the generated modules, in a stable order."""
    services: dict[str, ServiceDescriptor] = {}
    for module in import_generated_modules(root_package):
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = service
    return [services[name] for name in sorted(services)]


def target_key(service: ServiceDescriptor) -> str:
    """The package's last non-version part: `verifier.tasks.v1.TaskService` -> "tasks"
    (its target is the tasks_addr setting)."""
    parts = service.full_name.split(".")[:-1]
    while len(parts) > 1 and _VERSION.match(parts[-1]):
        parts.pop()
    return parts[-1] if parts else service.name.lower()


def http_rules(method: MethodDescriptor) -> list[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RouteConfigError("http rule without a pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if kind not in _HTTP_PATTERNS:
        raise RouteConfigError(f"unknown http pattern {kind}")
    return kind.upper(), str(getattr(rule, kind))


def _check_field_path(rpc: Rpc, path: tuple[str, ...]) -> None:
    descriptor: Any = rpc.request_class.DESCRIPTOR
    for index, name in enumerate(path):
        found = descriptor.fields_by_name.get(name)
        if found is None:
            raise RouteConfigError(f"{rpc.path}: no request field {'.'.join(path)}")
        if index < len(path) - 1:
            if found.type != FieldDescriptor.TYPE_MESSAGE:
                raise RouteConfigError(f"{rpc.path}: {'.'.join(path)} is not a message path")
            descriptor = found.message_type
        elif found.type == FieldDescriptor.TYPE_MESSAGE or _is_repeated(found):
            raise RouteConfigError(f"{rpc.path}: path variable {name} must be a singular scalar")


def _is_repeated(field_descriptor: FieldDescriptor) -> bool:
    return bool(field_descriptor.is_repeated)


def build_routes(
    services: Iterable[ServiceDescriptor], targets: Mapping[str, str]
) -> list[HttpRoute]:
    """HTTP routes of every annotated method whose service has a target, most specific first."""
    routes: list[HttpRoute] = []
    for service in services:
        key = target_key(service)
        annotated = [m for m in service.methods if http_rules(m)]
        if not annotated:
            continue
        if key not in targets:
            log.warning("gateway.service_without_target", service=service.full_name, key=key)
            continue
        for method in annotated:
            if method.client_streaming:
                raise RouteConfigError(f"{service.full_name}.{method.name}: client streaming")
            rpc = Rpc(
                service=service,
                method=method,
                target=key,
                request_class=message_factory.GetMessageClass(method.input_type),
                response_class=message_factory.GetMessageClass(method.output_type),
            )
            for index, rule in enumerate(http_rules(method)):
                routes.append(_route(rpc, rule, index))
    _check_duplicates(routes)
    return sorted(routes, key=lambda route: route.template.specificity)


def _route(rpc: Rpc, rule: http_pb2.HttpRule, binding: int) -> HttpRoute:
    http_method, template_text = _pattern(rule)
    template = parse_template(template_text)
    path_fields = tuple(variable.field_path for variable in template.variables)
    for path in path_fields:
        _check_field_path(rpc, path)
    if rule.body not in ("", "*") and rule.body not in rpc.request_class.DESCRIPTOR.fields_by_name:
        raise RouteConfigError(f"{rpc.path}: body field {rule.body} not in the request")
    response_fields = rpc.response_class.DESCRIPTOR.fields_by_name
    if rule.response_body and rule.response_body not in response_fields:
        raise RouteConfigError(f"{rpc.path}: response_body {rule.response_body} not in response")
    return HttpRoute(
        rpc, http_method, template, rule.body, rule.response_body, path_fields, binding
    )


def _check_duplicates(routes: list[HttpRoute]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        key = (route.http_method, route.template.openapi_path)
        if key in seen:
            raise RouteConfigError(
                f"{route.http_method} {route.template.template} bound twice: "
                f"{seen[key]} and {route.rpc.path}"
            )
        seen[key] = route.rpc.path


@dataclass(frozen=True)
class RouteMatch:
    route: HttpRoute
    path_values: dict[tuple[str, ...], str]


class RouteTable:
    """Matches (method, raw path) to a route; tells 404 from 405."""

    def __init__(self, routes: Iterable[HttpRoute]) -> None:
        self.routes = list(routes)

    def __iter__(self) -> Iterator[HttpRoute]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, http_method: str, raw_path: str) -> RouteMatch | list[str] | None:
        """The match; or the allowed methods when only the method differs; or None."""
        allowed: list[str] = []
        for route in self.routes:
            values = route.template.match(raw_path)
            if values is None:
                continue
            if route.http_method == http_method:
                return RouteMatch(route, values)
            if route.http_method not in allowed:
                allowed.append(route.http_method)
        return allowed or None
