"""Request context carried across services: the request id lives in a
contextvar, is bound into every log line, and travels in gRPC metadata."""

from __future__ import annotations

import contextvars
import re
import uuid

import structlog

REQUEST_ID_METADATA_KEY = "x-request-id"
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def sanitize_request_id(value: str | None) -> str:
    """The caller's id when it is a sane token, else a fresh one (ids end up in logs)."""
    if value and _REQUEST_ID_PATTERN.match(value):
        return value
    return new_request_id()


def current_request_id() -> str:
    return request_id_var.get()


def bind_request_id(request_id: str) -> contextvars.Token[str]:
    """Set the request id for this context and bind it into structlog's context."""
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id_var.set(request_id)


def bind_task_id(task_id: str) -> None:
    """Bind the task id into every log line of this context."""
    structlog.contextvars.bind_contextvars(task_id=task_id)
