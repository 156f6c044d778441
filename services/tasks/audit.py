"""The audit entry of a change the service layer makes: what happened, said
how, at the store's time, under the request id of the call that caused it
(the ambient one: shared.context)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.context import current_request_id

from .model import EventType
from .rows import Audit


def entry(clock: Callable[[], datetime], event: EventType, message: str) -> Audit:
    return Audit(type=event, message=message, request_id=current_request_id(), at=clock())
