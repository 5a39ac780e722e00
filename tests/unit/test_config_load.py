"""The configuration file is parsed once, at load, into frozen typed sections: every bad key of
every section is one ConfigError that names the key and the `file:line` where it is written."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from ext_proc.audit.config import AuditConfig
from ext_proc.configerror import ConfigError
from ext_proc.identity import ConfigError as IdentityConfigError
from ext_proc.identity import IdentityConfig
from ext_proc.ratelimit import RateLimitConfig
from ext_proc.server.config import ConfigError as ServerConfigError
from ext_proc.server.config import load_config
from ext_proc.server.tracing import TracingConfig


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ledgergate.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_one_config_error_class():
    assert ConfigError is IdentityConfigError is ServerConfigError


def test_the_defaults_load_into_typed_frozen_sections(tmp_path):
    cfg = load_config(None, base_dir=tmp_path)
    assert isinstance(cfg.identity, IdentityConfig) and isinstance(cfg.audit, AuditConfig)
    assert isinstance(cfg.ratelimit, RateLimitConfig) and isinstance(cfg.tracing, TracingConfig)
    assert cfg.audit.sink == "file" and cfg.audit.dir == tmp_path / "var" / "audit"
    assert cfg.audit_signing_key == tmp_path / "var" / "keys" / "audit-signing.pem"
    assert cfg.capture_max_response_bytes == 1024 * 1024 and cfg.cache["backend"] == "memory"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_body_bytes = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.audit.sink = "postgres"  # type: ignore[misc]


def test_a_full_audit_section_is_read(tmp_path):
    path = _write(tmp_path, """
        audit:
          sink: postgres
          dsn: postgresql://audit@db/ledgergate
          table: audit_records
          signing_key: keys/sign.pem
          capture: {key_file: /etc/capture.key, key_id: legal-1, max_response_bytes: 4096}
          witness:
            - {dir: /mnt/witness, interval_s: 5}
            - {url: "https://witness.example/lg", timeout_s: 2}
            - {dsn: "postgresql://w@other/lg"}
        """)
    a = load_config(path, base_dir=tmp_path).audit
    assert (a.sink, a.dsn, a.table, a.signing_key) == ("postgres", "postgresql://audit@db/ledgergate",
                                                       "audit_records", tmp_path / "keys" / "sign.pem")
    assert a.capture is not None and (a.capture.key_file, a.capture.key_id, a.capture.max_response_bytes) == (
        Path("/etc/capture.key"), "legal-1", 4096)
    assert [(w.dir, w.url, w.dsn) for w in a.witnesses] == [
        ("/mnt/witness", None, None), (None, "https://witness.example/lg", None),
        (None, None, "postgresql://w@other/lg")]
    assert a.witness_interval_s == 5.0 and a.witnesses[1].timeout_s == 2.0
    assert a.witnesses[2].table == "ledgergate_checkpoints"


# (the file's audit section, the key the message must start with, the line that key is on)
AUDIT_REJECTIONS = [
    ("audit:\n  sink: file\n  dri: var/audit\n", "audit.dri", 3),
    ("audit:\n  sink: s3\n", "audit.sink", 2),
    ("audit:\n  sink: postgres\n", "audit.dsn", 1),
    ("audit:\n  sink: postgres\n  dsn: 5432\n", "audit.dsn", 3),
    ("audit:\n  table: [a, b]\n", "audit.table", 2),
    ("audit:\n  dir: 7\n", "audit.dir", 2),
    ("audit: [file]\n", "audit", 1),
    ("audit:\n  capture: {key_id: x}\n", "audit.capture.key_file", 2),
    ("audit:\n  capture: {key_file: k, keyid: x}\n", "audit.capture.keyid", 2),
    ("audit:\n  capture:\n    key_file: k\n    max_response_bytes: lots\n", "audit.capture.max_response_bytes", 4),
    ("audit:\n  witness: {path: /mnt/w}\n", "audit.witness", 2),
    ("audit:\n  witness: {dir: /mnt/w, url: 'https://w'}\n", "audit.witness", 2),
    ("audit:\n  witness: {dir: /mnt/w, intervl_s: 5}\n", "audit.witness.intervl_s", 2),
    ("audit:\n  witness:\n    - {dir: /mnt/w}\n    - {url: 'https://w', timeout_s: soon}\n",
     "audit.witness[1].timeout_s", 4),
    ("audit:\n  witness:\n    - {dir: /mnt/w, interval_s: -1}\n", "audit.witness[0].interval_s", 3),
    ("audit:\n  witness: [/mnt/w]\n", "audit.witness[0]", 2),
]


@pytest.mark.parametrize("text,key,line", AUDIT_REJECTIONS, ids=[k for _t, k, _l in AUDIT_REJECTIONS])
def test_a_bad_audit_section_names_the_key_and_its_line(tmp_path, text, key, line):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, base_dir=tmp_path)
    assert str(info.value).startswith(f"{path}:{line}: {key}:"), str(info.value)


# Every other section's parser goes through the same door with its file:line.
OTHER_REJECTIONS = [
    ("ratelimit:\n  backend: memcached\n", "ratelimit.backend", 2),
    ("ratelimit:\n  backend: redis\n  url: 6379\n", "ratelimit.url", 3),
    ("ratelimit:\n  backnd: redis\n", "ratelimit.backnd", 2),
    ("ratelimit:\n  output_reservation: {default: 0}\n", "ratelimit.output_reservation.default", 2),
    ("tracing:\n  enabled: yes please\n", "tracing.enabled", 2),
    ("cache:\n  backend: disk\n", "cache.backend", 2),
    ("identity:\n  issuers:\n    - name: x\n      audience: [a]\n", "identity.issuers[0]", 3),
    ("server:\n  health_interval_s: 0\n", "server.health_interval_s", 2),
    ("limits:\n  max_finding_chars: 0\n", "limits.max_finding_chars", 2),
    ("limits:\n  max_inspection_bytes: -1\n", "limits.max_inspection_bytes", 2),
    ("upstreams:\n  openai: {timeout: forever}\n", "upstreams.openai.timeout", 2),
    ("upstreams:\n  cohere: {}\n", "upstreams.cohere", 2),
    ("audti:\n  sink: file\n", "audti", 1),
]


@pytest.mark.parametrize("text,key,line", OTHER_REJECTIONS, ids=[k for _t, k, _l in OTHER_REJECTIONS])
def test_every_section_rejects_at_load_with_file_and_line(tmp_path, text, key, line):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, base_dir=tmp_path)
    assert str(info.value).startswith(f"{path}:{line}: {key}"), str(info.value)


def test_a_key_from_the_defaults_or_overrides_has_no_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, base_dir=tmp_path, overrides={"audit": {"sink": "s3"}})
    assert str(info.value).startswith("audit.sink:")
    path = _write(tmp_path, "server:\n  listen: ['127.0.0.1:1']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, base_dir=tmp_path, overrides={"audit": {"sink": "s3"}})
    assert str(info.value).startswith(f"{path}: audit.sink:")
