"""Domain errors with meaning. Services subclass these (TaskNotFound,
InvalidTransition, EvidenceMalformed, ...); `shared.grpc_server` maps each base
class to its gRPC status code in one place. Nothing here imports grpc."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a service reports to its caller on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message

    def within(self, item: str) -> InvalidArgument:
        """The same error about the field of one item of a batch (`requests[3]`)."""
        return InvalidArgument(f"{item}.{self.field}" if self.field else item, self.detail)


class NotFound(DomainError):
    """The named resource does not exist."""


class AlreadyExists(DomainError):
    """The resource exists already."""


class FailedPrecondition(DomainError):
    """The resource is in a state that does not allow the operation."""


class ResourceExhausted(DomainError):
    """A size or rate limit was exceeded."""


class Unavailable(DomainError):
    """A dependency is down; the caller may retry."""


class DeadlineExceeded(DomainError):
    """A dependency did not answer in time; the caller may retry."""


class Unauthenticated(DomainError):
    """The caller did not say who it is, or what it said is not valid."""


class PermissionDenied(DomainError):
    """The caller may not do this (for example an evidence URL to a disallowed host)."""
