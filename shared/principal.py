"""Who is calling: the identity of the current request, readable by domain code.

The auth interceptor (shared.auth) resolves the caller (an API key or a peer
service's certificate) and binds it here for the handler's context; domain
modules read it with `current_identity()` without importing grpc. Outside a
request (a background job, a unit test) the identity is the process itself,
which may do everything.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

# The scopes an API key can carry (issue 12): what each lets its holder do.
SCOPE_SUBMIT = "tasks.submit"  # create, cancel and read its own tasks
SCOPE_READ = "tasks.read"  # read every task and report
SCOPE_QUEUE = "queue.operate"  # pause, resume, job actions, workers
SCOPE_ADMIN = "admin"  # manage keys; implies every other scope
SCOPES: tuple[str, ...] = (SCOPE_SUBMIT, SCOPE_READ, SCOPE_QUEUE, SCOPE_ADMIN)

KIND_KEY = "key"
KIND_SERVICE = "service"
KIND_SYSTEM = "system"


@dataclass(frozen=True)
class Identity:
    """A resolved caller. `owner` is what a submitter's tasks are filed under."""

    kind: str
    principal: str
    owner: str = ""
    scopes: frozenset[str] = frozenset()
    key_id: str = ""
    # The caller's bearer token, kept only to forward it on its behalf (never logged).
    token: str = field(default="", repr=False, compare=False)

    @classmethod
    def system(cls) -> Identity:
        return cls(KIND_SYSTEM, "system", scopes=frozenset(SCOPES))

    @classmethod
    def service(cls, name: str) -> Identity:
        return cls(KIND_SERVICE, name, scopes=frozenset(SCOPES))

    def has(self, scope: str) -> bool:
        return scope in self.scopes or SCOPE_ADMIN in self.scopes

    def has_any(self, scopes: frozenset[str]) -> bool:
        return any(self.has(scope) for scope in scopes)

    @property
    def sees_all_tasks(self) -> bool:
        """True for every caller but a submitter: they read every task and report."""
        return self.kind != KIND_KEY or self.has(SCOPE_READ)

    def can_see(self, owner: str) -> bool:
        return self.sees_all_tasks or (bool(self.owner) and owner == self.owner)

    @property
    def owner_filter(self) -> str:
        """The owner a list must be limited to; empty when the caller sees all."""
        return "" if self.sees_all_tasks else self.owner

    def log_fields(self) -> dict[str, str]:
        return {"caller": self.principal, "caller_kind": self.kind, "key_id": self.key_id}


_SYSTEM = Identity.system()
identity_var: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity", default=_SYSTEM)


def current_identity() -> Identity:
    return identity_var.get()


def bind_identity(identity: Identity) -> contextvars.Token[Identity]:
    return identity_var.set(identity)
