"""`ledgergate console --audit STORE [--policies DIR] [--listen 127.0.0.1:8600]`."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"console: --listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledgergate console",
                                description="the auditor's console: a read-only web view of the audit evidence")
    p.add_argument("--audit", required=True, metavar="STORE", help="audit directory or postgresql:// DSN")
    p.add_argument("--table", default="ledgergate_audit", help="PostgreSQL audit table")
    p.add_argument("--policies", metavar="DIR", help="content-addressed policy store (var/policy-store)")
    p.add_argument("--listen", default="127.0.0.1:8600", help="HOST:PORT (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback listen address (put TLS in front: tokens travel in a cookie)")
    p.add_argument("--config", help="ledgergate configuration whose identity section authenticates auditors "
                                    "(default: the local stack's dev issuer under --var-dir)")
    p.add_argument("--var-dir", default="var", help="the local stack's dev material (dev issuer JWKS)")
    p.add_argument("--role", default="auditor", help="the role an auditor's token must carry")
    p.add_argument("--index", metavar="PATH", help="SQLite index file (default: in the user's cache dir)")
    p.add_argument("--access-log", metavar="PATH",
                   help="where every view is recorded (default: console-access.jsonl beside the index)")
    p.add_argument("--witness", action="append", default=[], metavar="DIR|DSN",
                   help="a witness of the checkpoints (repeatable): the store must still extend what it saw")
    p.add_argument("--witness-table", default=None, help="table of a PostgreSQL witness")
    p.add_argument("--log-level", default="warning")
    return p


def build_console(a: argparse.Namespace):
    from ext_proc.console.app import Console
    from ext_proc.console.auth import AccessLog, AuditorAuth, identity_config
    from ext_proc.console.index import Index, default_index_path
    from ext_proc.console.store import open_store

    store = open_store(a.audit, a.table)
    index_path = Path(a.index) if a.index else default_index_path(store.label)
    if store.kind == "file" and index_path.resolve().parent == store.directory:
        raise SystemExit("console: the index must not be inside the audit store")
    access_log = Path(a.access_log) if a.access_log else index_path.with_name("console-access.jsonl")
    auth = AuditorAuth(identity_config(a.config, a.var_dir), role=a.role)
    return Console(store, Index(index_path), auth, AccessLog(access_log), a.policies, witnesses=a.witness,
                   witness_table=a.witness_table), index_path, access_log


def run(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    host, port = parse_listen(a.listen)
    if not is_loopback(host) and not a.allow_remote:
        raise SystemExit(f"console: {host} is not a loopback address; pass --allow-remote to bind it")
    import uvicorn

    from ext_proc.console.app import create_app

    console, index_path, access_log = build_console(a)
    print(f"ledgergate console on http://{host}:{port}/ (store {console.store.label}; index {index_path}; "
          f"access log {access_log})", flush=True)
    uvicorn.run(create_app(console), host=host, port=port, log_level=a.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
