"""The `audit:` section of the configuration, checked once at load.

Unknown keys and wrong types are errors naming the key: a misspelt `witnes:` silently ignored
would leave the store without the witness its operator believes it has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ext_proc.configerror import ConfigError

DEFAULT_TABLE = "ledgergate_audit"
DEFAULT_WITNESS_TABLE = "ledgergate_checkpoints"

_KEYS = {"sink", "dir", "dsn", "table", "signing_key", "capture", "witness"}
_CAPTURE_KEYS = {"key_file", "key_id", "max_response_bytes"}
# A witness is one of three kinds, told apart by the key that names where it lives.
_WITNESS_KEYS = {"dir": {"dir", "interval_s"}, "dsn": {"dsn", "table", "interval_s"},
                 "url": {"url", "timeout_s", "keep", "interval_s"}}


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """Encrypted capture for legal hold (audit/capture.py)."""

    key_file: Path
    key_id: str = "capture-1"
    max_response_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    """Where signed checkpoints are published: exactly one of dir, dsn, url."""

    dir: str | None = None
    dsn: str | None = None
    table: str = DEFAULT_WITNESS_TABLE
    url: str | None = None
    timeout_s: float = 5.0
    keep: str | None = None     # url only: where the witness's cosigned checkpoints are kept


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sink: Literal["file", "postgres"] = "file"
    dir: Path = Path("var/audit")
    dsn: str | None = None
    table: str = DEFAULT_TABLE
    signing_key: Path = Path("var/keys/audit-signing.pem")
    capture: CaptureConfig | None = None
    witnesses: tuple[WitnessConfig, ...] = ()
    witness_interval_s: float = 60.0    # 0: publish only on drain

    @classmethod
    def from_dict(cls, section: Any, base_dir: Path | None = None) -> AuditConfig:
        """Relative paths (dir, signing_key, capture.key_file) are resolved against base_dir."""
        base = base_dir if base_dir is not None else Path.cwd()
        d = _mapping(section, "audit", _KEYS)
        sink = d.get("sink", "file")
        if sink not in ("file", "postgres"):
            raise ConfigError(f"audit.sink: {sink!r} is not one of file, postgres")
        dsn = _optional_str(d.get("dsn"), "audit.dsn")
        if sink == "postgres" and dsn is None:
            raise ConfigError("audit.dsn: the postgres sink needs a postgresql:// DSN")
        witnesses, interval = _witnesses(d.get("witness"))
        return cls(
            sink=sink,
            dir=_path(d.get("dir", "var/audit"), base, "audit.dir"),
            dsn=dsn,
            table=_str(d.get("table", DEFAULT_TABLE), "audit.table"),
            signing_key=_path(d.get("signing_key", "var/keys/audit-signing.pem"), base, "audit.signing_key"),
            capture=_capture(d.get("capture"), base),
            witnesses=witnesses,
            witness_interval_s=interval,
        )


def _capture(section: Any, base: Path) -> CaptureConfig | None:
    if section is None:
        return None
    d = _mapping(section, "audit.capture", _CAPTURE_KEYS)
    if "key_file" not in d:
        raise ConfigError("audit.capture.key_file: required (a file of exactly 32 random bytes)")
    max_bytes = d.get("max_response_bytes", 1024 * 1024)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError("audit.capture.max_response_bytes: must be a non-negative integer")
    return CaptureConfig(key_file=_path(d["key_file"], base, "audit.capture.key_file"),
                         key_id=_str(d.get("key_id") or "capture-1", "audit.capture.key_id"),
                         max_response_bytes=max_bytes)


def _witnesses(section: Any) -> tuple[tuple[WitnessConfig, ...], float]:
    """`audit.witness`: one mapping or a list of them; the first one's interval_s is the
    publication interval (one timer publishes to every witness)."""
    if not section:
        return (), 60.0
    items = section if isinstance(section, list) else [section]
    out = []
    interval = 60.0
    for i, item in enumerate(items):
        where = f"audit.witness[{i}]" if isinstance(section, list) else "audit.witness"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: must be a mapping")
        kinds = [k for k in _WITNESS_KEYS if k in item]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: needs exactly one of `dir` (a directory outside the audit store), `dsn`"
                              " (a PostgreSQL server other than the audit store's) or `url` (a C2SP tlog-witness)")
        d = _mapping(item, where, _WITNESS_KEYS[kinds[0]])
        if i == 0 and "interval_s" in d:
            interval = _seconds(d["interval_s"], f"{where}.interval_s")
        out.append(WitnessConfig(
            dir=_optional_str(d.get("dir"), f"{where}.dir"),
            dsn=_optional_str(d.get("dsn"), f"{where}.dsn"),
            table=_str(d.get("table", DEFAULT_WITNESS_TABLE), f"{where}.table"),
            url=_optional_str(d.get("url"), f"{where}.url"),
            timeout_s=_seconds(d.get("timeout_s", 5.0), f"{where}.timeout_s"),
            keep=_optional_str(d.get("keep"), f"{where}.keep")))
    return tuple(out), interval


def _mapping(section: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed under {where}: {', '.join(sorted(allowed))}")
    return section


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: must be a non-empty string")
    return v


def _optional_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _path(v: Any, base: Path, where: str) -> Path:
    if not isinstance(v, (str, Path)) or not str(v):
        raise ConfigError(f"{where}: must be a path")
    p = Path(v)
    return p if p.is_absolute() else base / p


def _seconds(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{where}: must be a non-negative number of seconds")
    return float(v)
