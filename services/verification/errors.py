"""Domain errors of the verification engine.

Each subclasses a base of shared.errors, which shared.grpc_server maps to a
gRPC status code in one place. They carry a field name and a human message,
never evidence bytes or secrets, which could end up in logs.
"""

from __future__ import annotations

from shared.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

VerificationError = DomainError  # what the CLI and callers catch


class _Fielded(DomainError):
    """Mixin: a message plus the name of the field it is about (may be empty)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable with its keyword argument: errors cross the pool boundary.
        return (_rebuild_fielded, (type(self), self.message, self.field))


class EvidenceMalformed(InvalidArgument):
    """Evidence that cannot be parsed or breaks a size bound."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.message = message  # without the field prefix; str(exc) has both

    def __reduce__(self) -> tuple[object, ...]:
        return (EvidenceMalformed, (self.field, self.message))


class CollateralUnavailable(_Fielded, Unavailable):
    """No collateral could be found or fetched for the quote (retryable)."""


class CollateralExpired(_Fielded, FailedPrecondition):
    """Collateral exists but its validity window excludes the evaluation time."""


class FetchNotAllowed(_Fielded, PermissionDenied):
    """A URL built from task data is outside the allowed hosts (SSRF guard)."""


class FetchFailed(_Fielded, Unavailable):
    """A remote evidence source failed in a way a retry may mend (timeout, 5xx)."""


class FetchRejected(_Fielded, FailedPrecondition):
    """A remote evidence source answered, but not with usable evidence (4xx, bad shape)."""


class ReportNotFound(_Fielded, NotFound):
    """No stored report under the requested key."""


class ReportStoreUnavailable(Unavailable):
    """The report store (S3 or the folder) failed; the caller may retry."""

    @classmethod
    def of(cls, doing: str, exc: Exception) -> ReportStoreUnavailable:
        """`doing` failed because of `exc`, with the store's own error code and
        message, so an operator sees why (botocore keeps them in `response`;
        the exception's str() can be long and nested)."""
        response = getattr(exc, "response", None)
        error = response.get("Error", {}) if isinstance(response, dict) else {}
        if error:
            why = f"{type(exc).__name__} {error.get('Code', '')}: {error.get('Message', '')}"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return cls(f"{doing} failed: {why.strip()}")


def _rebuild_fielded(cls: type[_Fielded], message: str, field: str) -> _Fielded:
    return cls(message, field=field)
