"""The verified identity of a caller, and the error when there is none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    issuer: str
    auth_method: str  # "jwt" | "api_key" | "mtls" | "introspection"
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    tenant: str | None
    scopes: tuple[str, ...]
    actor: tuple[str, ...]  # RFC 8693 act chain, the agent calling first
    credential_id: str  # a hash prefix naming the credential, never the credential
    expires_at: float | None

    def to_record(self) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "auth_method": self.auth_method,
                "roles": list(self.roles), "groups": list(self.groups), "tenant": self.tenant,
                "scopes": list(self.scopes), "actor": list(self.actor), "credential_id": self.credential_id}


class IdentityError(Exception):
    """No verified identity. `reason` is a stable code; `message` is safe to show the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
