"""`ledgergate audit verify|show|export|checkpoint PATH`."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from ext_proc.audit.merkle import leaf_hash, merkle_root
from ext_proc.audit.verify import verify_dir, verify_segments


def _is_dsn(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def _segments(path: str) -> list[tuple[str, list[bytes], bytes]]:
    if _is_dsn(path):
        from ext_proc.audit.postgres import read_segments

        return read_segments(path)
    return [(f.name, f.read_bytes().splitlines(), b"") for f in sorted(Path(path).glob("*.jsonl"))]


def _records(path: str):
    for _name, lines, _torn in _segments(path):
        for line in lines:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def replay(records, evaluate) -> dict:
    """Re-evaluate each decision record's recorded input with its recorded policy version.
    `evaluate(version, input) -> decision dict` is injected so replay is testable without files."""
    out = {"replayed": 0, "skipped": 0, "mismatches": [], "errors": 0}
    for rec in records:
        if rec.get("kind") != "decision":
            continue
        version = (rec.get("policy") or {}).get("version")
        if not version or not rec.get("input"):
            out["skipped"] += 1
            continue
        try:
            again = evaluate(version, rec["input"])
        except Exception as exc:  # noqa: BLE001 - a missing version is reported, not fatal
            out["errors"] += 1
            out["mismatches"].append({"request_id": rec.get("request_id"), "recorded": rec["decision"].get("outcome"),
                                      "replayed": f"error: {type(exc).__name__}"})
            continue
        out["replayed"] += 1
        recorded = rec.get("decision") or {}
        # A throttled request keeps the policy's own outcome in policy_outcome.
        want = recorded.get("policy_outcome", recorded.get("outcome"))
        if again.get("outcome") != want:
            out["mismatches"].append({"request_id": rec.get("request_id"), "recorded": want,
                                      "replayed": again.get("outcome")})
    return out


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ledgergate audit")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every segment: hashes, signatures, links, checkpoints")
    v.add_argument("path", help="audit directory or postgresql:// DSN")
    v.add_argument("--trust", action="append", default=None, metavar="KEY_ID",
                   help="accept only segments signed by these key ids (repeatable)")
    v.add_argument("--jobs", type=int, default=None,
                   help="processes for hashes and signatures (default: one per CPU on large logs)")
    s = sub.add_parser("show", help="every record of one request")
    s.add_argument("request_id")
    s.add_argument("--path", default="var/audit")
    e = sub.add_parser("export", help="records as JSON lines for a SIEM")
    e.add_argument("--path", default="var/audit")
    r = sub.add_parser("replay", help="re-evaluate every decision against the policy version that made it")
    r.add_argument("path", help="audit directory or postgresql:// DSN")
    r.add_argument("--policy-store", default="var/policy-store", help="content-addressed policy store")
    c = sub.add_parser("checkpoint", help="tree size and RFC 6962 Merkle root per segment")
    c.add_argument("--path", default="var/audit")
    c.add_argument("--sign", metavar="KEY_PEM", help="sign each checkpoint (C2SP signed-note style) with this Ed25519 key")
    c.add_argument("--origin", default="ledgergate", help="origin line of the checkpoint")
    a = p.parse_args(argv)
    if a.cmd == "verify":
        trust = set(a.trust) if a.trust else None
        rep = verify_segments(_segments(a.path), trust, jobs=a.jobs) if _is_dsn(a.path) \
            else verify_dir(a.path, trust, jobs=a.jobs)
        for w in rep.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not rep.ok:
            print(f"FAILED: {rep.problem}")
            return 1
        trust = "trusted keys" if a.trust else f"keys from genesis records ({', '.join(sorted(rep.key_ids))})"
        print(f"OK: {rep.records} records in {rep.segments} segments verified against {trust}")
        return 0
    path = a.path
    if a.cmd == "show":
        found = [r for r in _records(path) if r.get("request_id") == a.request_id]
        for r in found:
            print(json.dumps(r, indent=2, sort_keys=True))
        return 0 if found else 1
    if a.cmd == "replay":
        from ext_proc.policy import PolicyStore

        store = PolicyStore(a.policy_store)
        report = replay(_records(path), lambda version, inp: store.get(version).evaluate(inp).to_record())
        for m in report["mismatches"][:50]:
            print(f"MISMATCH {m['request_id']}: recorded {m['recorded']} replayed {m['replayed']}")
        print(f"replayed {report['replayed']} decisions, {len(report['mismatches'])} mismatches, "
              f"{report['skipped']} without a policy decision (identity or input failures)")
        return 1 if report["mismatches"] or report["errors"] else 0
    if a.cmd == "export":
        for r in _records(path):
            sys.stdout.write(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n")
        return 0
    if a.cmd == "checkpoint":
        for name, lines, _torn in _segments(path):
            leaves = []
            for line in lines:
                try:
                    leaves.append(leaf_hash(bytes.fromhex(json.loads(line)["hash"])))
                except (json.JSONDecodeError, KeyError, ValueError):
                    break
            body = f"{a.origin}/{name}\n{len(leaves)}\n{base64.b64encode(merkle_root(leaves)).decode()}\n"
            if a.sign:
                from ext_proc.audit.chain import key_id
                from ext_proc.audit.log import load_or_create_signing_key

                key = load_or_create_signing_key(a.sign)
                sig = base64.b64encode(key.sign(body.encode())).decode()
                body += f"\n\u2014 {a.origin} {key_id(key.public_key())} {sig}\n"
            print(body)
        return 0
    return 2
