"""The ledgergate configuration file: one YAML document with a section per concern.

Each concern parses its own section (identity, audit, ratelimit); this module only knows the
top-level shape, the defaults that make `make run` work from a fresh clone, and where the var/
material lives.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ext_proc.audit.config import AuditConfig
from ext_proc.cache.store import cache_settings
from ext_proc.configerror import ConfigError
from ext_proc.identity.config import IdentityConfig
from ext_proc.keyfiles import write_private
from ext_proc.policy.yamlsrc import YAMLSourceError, line_of, load_yaml
from ext_proc.providers import registry
from ext_proc.ratelimit.config import RateLimitConfig
from ext_proc.server.tracing import TracingConfig

if TYPE_CHECKING:
    from ext_proc.pipeline.envelope import EnvelopeRules

# The upstream clusters (Azure shares OpenAI's), each configurable under upstreams.NAME.
PROVIDERS = registry.upstream_clusters()


_KEY_PATH = re.compile(r"^([A-Za-z_][\w-]*(?:(?:\.[\w-]+)|\[\d+\])*)")


def config_line(path: Path, where: str) -> int | None:
    """The line in PATH of the deepest node named by WHERE ("identity.issuers[0].jwks_file"):
    errors point at `file:line`, like the policy checker's (the same line-keeping YAML loader).
    None when the key is not in the file (it came from the defaults) or the file is not YAML."""
    m = _KEY_PATH.match(where.strip())
    if not m:
        return None
    try:
        root = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLSourceError):
        return None
    steps: list[str | int] = [int(p[1:-1]) if p.startswith("[") else p
                              for p in re.findall(r"[^.\[\]]+|\[\d+\]", m.group(1))]
    if not isinstance(root, dict) or steps[0] not in root:
        return None
    return line_of(root, steps)


def located(path: str | Path | None, message: str) -> str:
    """`file:line: message` when the message names a key found in the file, else `file: message`."""
    if path is None:
        return message
    path = Path(path)
    if message.startswith(f"{path}:"):
        return message
    line = config_line(path, message)
    return f"{path}:{line}: {message}" if line else f"{path}: {message}"


@dataclass(frozen=True)
class Config:
    """The whole configuration, every section parsed and checked by load_config: nothing reads
    a raw dict after start-up."""

    base_dir: Path
    listen: list[str]
    policy_path: Path
    policy_store: Path
    identity: IdentityConfig
    audit: AuditConfig
    writer_id: str
    ratelimit: RateLimitConfig
    redaction_key_file: Path
    max_body_bytes: int
    max_response_buffer_bytes: int
    upstream_credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics_listen: str | None = None
    drain_grace_s: float = 10.0
    multiplex_models: dict[str, Any] = field(default_factory=dict)  # client model -> providers.translate.Target
    cache: Mapping[str, Any] = field(default_factory=dict)          # cache/store.py cache_settings
    health_interval_s: float = 1.0
    tracing: TracingConfig = field(default_factory=TracingConfig)
    config_path: Path | None = None     # re-read on SIGHUP for the sections that reload (identity)
    # Per-request inspection budget (pipeline/budget.py) and the envelope rules (pipeline/envelope.py).
    max_inspection_bytes: int = 32 * 1024 * 1024
    max_inspection_candidates: int = 10_000
    # The longest finding an answer may carry while it is still growing (a PEM block, an unbroken
    # token): held whole until it ends, the answer blocked past this (streaming/gate.py).
    max_finding_chars: int = 60_000
    envelope: Any = None

    @property
    def audit_signing_key(self) -> Path:
        return self.audit.signing_key

    @property
    def capture_max_response_bytes(self) -> int:
        return self.audit.capture.max_response_bytes if self.audit.capture else 1024 * 1024

    def resolve(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.base_dir / p


_TOP_KEYS = {"server", "identity", "policy", "audit", "ratelimit", "classify", "upstreams", "limits", "tracing",
             "multiplex", "envelope", "cache"}


def default_config_dict(var_dir: str = "var") -> dict[str, Any]:
    """The embedded defaults: the local stack of `make run`, everything under var/."""
    return {
        "server": {"listen": ["127.0.0.1:50051"], "metrics_listen": "127.0.0.1:9464"},
        "identity": {
            "issuers": [
                {
                    "name": "dev",
                    "issuer": "https://ledgergate.local/dev",
                    "audiences": ["ledgergate"],
                    "jwks_file": f"{var_dir}/dev/jwks.json",
                    "algorithms": ["EdDSA"],
                    "claims": {"roles": "roles", "groups": "groups", "tenant": "tenant", "scopes": "scope"},
                    "max_lifetime": "24h",
                    "leeway": "30s",
                }
            ],
        },
        "policy": {"path": "policies/default.yaml", "store": f"{var_dir}/policy-store"},
        "audit": {"sink": "file", "dir": f"{var_dir}/audit", "signing_key": f"{var_dir}/keys/audit-signing.pem"},
        "ratelimit": {"backend": "memory"},
        "classify": {"redaction_key_file": f"{var_dir}/keys/redaction-hash.key"},
        "limits": {"max_body_bytes": 4 * 1024 * 1024, "max_response_buffer_bytes": 8 * 1024 * 1024},
        # Off unless enabled: the SDK is an optional extra (`pip install ledgergate[tracing]`).
        "tracing": {"enabled": False, "exporter": "otlp", "endpoint": "http://127.0.0.1:4317",
                    "service_name": "ledgergate", "sample_ratio": 1.0},
    }


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None, *, base_dir: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Read the YAML file (or only the defaults when path is None), apply overrides, and parse
    every section. A ConfigError names `file:line` of the key when the key is in the file."""
    try:
        return _load_config(path, base_dir=base_dir, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(located(path, str(exc))) from None


def _load_config(path: str | Path | None, *, base_dir: str | Path | None,
                 overrides: dict[str, Any] | None) -> Config:
    data = default_config_dict()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping")
        unknown = set(loaded) - _TOP_KEYS
        if unknown:
            first = sorted(unknown)[0]
            raise ConfigError(located(path, f"{first}: unknown top-level key(s): {', '.join(sorted(unknown))}"
                                            f" (expected: {', '.join(sorted(_TOP_KEYS))})"))
        data = deep_merge(data, loaded)
    if overrides:
        data = deep_merge(data, overrides)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    server = data.get("server") or {}
    listen = server.get("listen") or ["127.0.0.1:50051"]
    if isinstance(listen, str):
        listen = [listen]
    limits = data.get("limits") or {}
    upstreams = data.get("upstreams") or {}
    creds: dict[str, dict[str, str]] = {}
    for name, spec in upstreams.items():
        if name not in PROVIDERS:
            raise ConfigError(f"upstreams.{name}: unknown provider (one of {', '.join(PROVIDERS)})")
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"upstreams.{name}: must be a mapping")
        upstream_timeouts(name, spec)      # validated here; `ledgergate up` renders them into Envoy
        if isinstance(spec, dict) and spec.get("credential"):
            creds[name] = dict(spec["credential"])
    return Config(
        base_dir=base,
        listen=list(listen),
        policy_path=_resolve(base, data["policy"]["path"]),
        policy_store=_resolve(base, data["policy"].get("store", "var/policy-store")),
        identity=IdentityConfig.from_dict(data.get("identity"), base),
        audit=AuditConfig.from_dict(data.get("audit"), base),
        writer_id=str(server.get("writer_id") or f"{socket.gethostname()}-{os.getpid()}"),
        ratelimit=RateLimitConfig.from_dict(data.get("ratelimit")),
        redaction_key_file=_resolve(base, (data.get("classify") or {}).get(
            "redaction_key_file", "var/keys/redaction-hash.key")),
        max_body_bytes=int(limits.get("max_body_bytes", 4 * 1024 * 1024)),
        max_response_buffer_bytes=int(limits.get("max_response_buffer_bytes", 8 * 1024 * 1024)),
        upstream_credentials=creds,
        metrics_listen=server.get("metrics_listen"),
        drain_grace_s=float(server.get("drain_grace_s", 10.0)),
        cache=cache_settings(data.get("cache")),
        health_interval_s=_positive_float(server.get("health_interval_s", 1.0), "server.health_interval_s"),
        tracing=TracingConfig.from_dict(data.get("tracing")),
        multiplex_models=_model_map(data.get("multiplex")),
        config_path=Path(path).resolve() if path is not None else None,
        max_inspection_bytes=_positive_int(limits.get("max_inspection_bytes", 32 * 1024 * 1024),
                                           "limits.max_inspection_bytes"),
        max_inspection_candidates=_positive_int(limits.get("max_inspection_candidates", 10_000),
                                                "limits.max_inspection_candidates"),
        max_finding_chars=_positive_int(limits.get("max_finding_chars", 60_000), "limits.max_finding_chars"),
        envelope=_envelope_rules(data.get("envelope")),
    )


UPSTREAM_KEYS = {"credential", "timeout", "idle_timeout", "per_try_timeout"}


def upstream_timeouts(name: str, spec: Any) -> dict[str, str]:
    """upstreams.NAME's Envoy route timeouts as Envoy durations ("600s"): `timeout` (the whole
    exchange, a whole stream included), `idle_timeout` (no byte either way), `per_try_timeout`
    (one attempt of a failover chain). Only the keys given; ConfigError names a bad one."""
    from ext_proc.identity.config import parse_duration

    spec = spec or {}
    unknown = sorted(set(spec) - UPSTREAM_KEYS)
    if unknown:
        raise ConfigError(f"upstreams.{name}: unknown key(s) {unknown}; allowed: {sorted(UPSTREAM_KEYS)}")
    out = {}
    for key in ("timeout", "idle_timeout", "per_try_timeout"):
        if spec.get(key) is None:
            continue
        seconds = parse_duration(spec[key], f"upstreams.{name}.{key}")
        out[key] = f"{seconds:g}s"
    return out


def _positive_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{where}: must be a positive integer")
    return v


def _envelope_rules(section: Any) -> EnvelopeRules:
    from ext_proc.pipeline.envelope import EnvelopeRules

    try:
        return EnvelopeRules.from_config(section)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _positive_float(v: Any, where: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be a number") from None
    if not f > 0:
        raise ConfigError(f"{where}: must be greater than 0")
    return f


def _model_map(section: Any) -> dict[str, Any]:
    from ext_proc.pipeline.multiplex import load_model_map

    try:
        return load_model_map(section)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _resolve(base: Path, p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else base / p


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """A random key file (mode 0600), created on first use: the redaction hash key."""
    if path.exists():
        data = path.read_bytes()
        if len(data) < 16:
            raise ConfigError(f"{path}: key file too short")
        return data
    data = os.urandom(size)
    write_private(path, data)
    return data
