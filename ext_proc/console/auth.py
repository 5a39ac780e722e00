"""Who may look: an auditor with a JWT verified by the gateway's own identity machinery (the same
issuer configuration, JWKS handling and claim mapping), holding the auditor role. And the access
log the console appends to: who looked at what, when. Never the token itself."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ext_proc.identity.config import IdentityConfig
from ext_proc.identity.model import Identity, IdentityError
from ext_proc.identity.resolver import IdentityResolver


def identity_config(config_path: str | None, var_dir: str | Path) -> IdentityConfig:
    """The `identity` section of a ledgergate configuration file; without one, the local stack's
    dev issuer under VAR/dev (what `ledgergate up` trusts)."""
    if config_path:
        doc = yaml.safe_load(Path(config_path).read_text()) or {}
        return IdentityConfig.from_dict(doc.get("identity") or {}, Path(config_path).resolve().parent)
    var_dir = Path(var_dir).resolve()
    return IdentityConfig.from_dict({"issuers": [{
        "name": "dev", "issuer": "https://ledgergate.local/dev", "audiences": ["ledgergate"],
        "jwks_file": str(var_dir / "dev" / "jwks.json"), "algorithms": ["EdDSA"],
        "claims": {"roles": "roles", "groups": "groups", "tenant": "tenant", "scopes": "scope"},
        "max_lifetime": "24h", "leeway": "30s"}]}, var_dir)


class NotAnAuditor(IdentityError):
    pass


class AuditorAuth:
    def __init__(self, config: IdentityConfig, role: str = "auditor") -> None:
        self.resolver = IdentityResolver(config)
        self.role = role

    async def start(self) -> None:
        await self.resolver.start()

    async def close(self) -> None:
        await self.resolver.close()

    async def authenticate(self, token: str, now: float) -> Identity:
        """The verified identity of an auditor, or IdentityError (the reason is safe to show)."""
        identity = await self.resolver.resolve({"authorization": [f"Bearer {token}"]}, {}, now)
        if self.role not in identity.roles:
            raise NotAnAuditor("not_auditor", f"the token does not carry the {self.role!r} role")
        return identity


class AccessLog:
    """Append-only JSON lines, one per request to the console, fsynced: the record of who looked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"ts_ms": int(time.time() * 1000), **entry}, sort_keys=True,
                          separators=(",", ":")).encode() + b"\n"
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
