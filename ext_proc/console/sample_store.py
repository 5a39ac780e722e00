"""A signed, hash-chained sample audit store in the file sink's format, sealed by the real chain
writer: for the console's tests, its benchmark and its screenshots. Decision and outcome records
have the shape the gateway writes (ext_proc.audit.record), with varied subjects, routes, labels,
rules and outcomes; no text, like the real ones."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, seal_capture
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.record import (
    Caller,
    Classification,
    DecisionRecord,
    Digests,
    OutcomeRecord,
    PolicyRef,
    ResponseInspection,
    Routing,
    Ruling,
    Steps,
)

SUBJECTS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
TENANTS = ["acme", "globex", "initech"]
ROLES = ["developer", "analyst", "support", "admin"]
ROUTES = [("/v1/chat/completions", "openai", "gpt-4o-mini"), ("/v1/messages", "anthropic", "claude-3-5-haiku"),
          ("/v1/responses", "openai", "gpt-4.1"),
          ("/v1beta/models/gemini-2.0-flash:generateContent", "gemini", "gemini-2.0-flash")]
LABELS = ["pii.email", "pii.phone", "pii.iban", "secret.api_key", "pii.credit_card", "pii.person_name"]
OUTCOMES = [("permit", 0.7), ("redact", 0.15), ("deny", 0.12), ("observe", 0.03)]


def _pick_outcome(rnd: random.Random) -> str:
    x = rnd.random()
    for name, p in OUTCOMES:
        if x < p:
            return name
        x -= p
    return "permit"


def sample_pair(rnd: random.Random, now_ms: int, policy_version: str,
                capture_key: bytes | None = None) -> tuple[dict, dict | None]:
    """One request's decision record and (unless denied) its outcome record, as committed. With
    CAPTURE_KEY both carry a sealed capture of a made-up body, as under legal hold."""
    subject = rnd.choice(SUBJECTS)
    path, provider, model = rnd.choice(ROUTES)
    outcome = _pick_outcome(rnd)
    labels = rnd.sample(LABELS, rnd.choice([0, 0, 1, 1, 2])) if outcome != "permit" or rnd.random() < .2 else []
    findings = [{"label": lb, "start": s, "end": s + 12, "confidence": 90, "validator": None, "segment": 0}
                for lb, s in ((lb, rnd.randrange(0, 400)) for lb in labels)]
    summary = {lb: {"count": 1, "max_confidence": 90} for lb in sorted(labels)}
    rule = {"permit": "allow-developers", "redact": "redact-pii", "deny": "deny-secrets",
            "observe": "observe-new-models"}[outcome]
    status = 403 if outcome == "deny" else 200
    identity = {"subject": subject, "issuer": "https://ledgergate.local/dev", "auth_method": "jwt",
                "roles": [rnd.choice(ROLES)], "groups": [], "tenant": rnd.choice(TENANTS), "scopes": [],
                "actor": [], "credential_id": "jwt:" + uuid.UUID(int=rnd.getrandbits(128)).hex[:16]}
    request_id = str(uuid.UUID(int=rnd.getrandbits(128)))

    def capture(kind: str) -> dict | None:
        if capture_key is None:
            return None
        text, aad = (f"prompt of {request_id}", request_id.encode()) if kind == "decision" else \
            (f"response to {request_id}", request_id.encode() + RESPONSE_CAPTURE_AAD)
        return seal_capture(capture_key, "legal-1", text.encode(), aad)

    dec = DecisionRecord(
        request_id=request_id, received_ms=now_ms - 3, decided_ms=now_ms, caller=Caller(identity),
        routing=Routing({"path": path, "surface": f"{provider}.api", "api": "chat", "provider": provider,
                         "inspectable": True}, provider=provider, model_requested=model, model_routed=model,
                        upstream=provider),
        classification=Classification(summary, findings),
        policy=PolicyRef("default", policy_version),
        decision=Ruling({"outcome": outcome, "observed": None, "status": status, "reason": f"rule {rule}",
                         "code": "policy_" + outcome, "matched": [{"rule": rule, "effect": outcome, "priority": None,
                                                                  "why": [f"labels {', '.join(labels) or 'none'}"]}],
                         "redact": {}, "max_tokens_cap": None, "limits": [], "mode": "enforce"}, redactions=[]),
        digests=Digests(uuid.UUID(int=rnd.getrandbits(128)).hex * 2,
                        None if outcome == "deny" else uuid.UUID(int=rnd.getrandbits(128)).hex * 2),
        steps=Steps(capture=capture("decision")))
    if outcome == "deny":
        return dec.to_dict(), None
    out = OutcomeRecord(
        request_id=request_id, completed_ms=now_ms + rnd.randrange(50, 900), status=200,
        response=ResponseInspection(
            response_sha256=uuid.UUID(int=rnd.getrandbits(128)).hex * 2,
            classification={"summary": {}, "findings": []}, redactions=[],
            usage={"input_tokens": rnd.randrange(5, 900), "output_tokens": rnd.randrange(5, 900)},
            blocked=None, streamed=rnd.random() < .3),
        upstream_host="127.0.0.1", capture=capture("outcome"))
    return dec.to_dict(), out.to_dict()


def write_sample_store(directory: str | Path, *, requests: int, start_ms: int, span_ms: int, writers: int = 2,
                       seed: int = 7, policy_versions: tuple[str, ...] = ("a" * 64, "b" * 64),
                       close: bool = True, capture_key: bytes | None = None) -> list[Path]:
    """`requests` requests spread over [start_ms, start_ms + span_ms), round-robin over `writers`
    segments; each segment opens with a genesis and (when `close`) ends with a checkpoint."""
    import base64

    from ext_proc.audit.merkle import MerkleFrontier, leaf_hash

    rnd = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chains, files, frontiers = [], [], []
    for w in range(writers):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed % 256, w % 256]) * 16)
        chain = ChainWriter(key, f"sample-w{w}", f"20261129T000000Z-{w:08x}")
        path = directory / f"sample-w{w}-{chain.segment_id}.jsonl"
        fh = open(path, "wb")
        g = chain.genesis(start_ms)
        fh.write(canonical_json(g) + b"\n")
        frontier = MerkleFrontier()
        frontier.append(leaf_hash(bytes.fromhex(g["hash"])))
        chains.append(chain)
        files.append(fh)
        frontiers.append(frontier)
    step = max(1, span_ms // max(1, requests))
    for i in range(requests):
        now = start_ms + i * step
        version = policy_versions[min(len(policy_versions) - 1, i * len(policy_versions) // max(1, requests))]
        w = i % writers
        for body in sample_pair(rnd, now, version, capture_key):
            if body is None:
                continue
            rec, line = chains[w].seal_line(body, body["timestamp_ms"])
            files[w].write(line + b"\n")
            frontiers[w].append(leaf_hash(bytes.fromhex(rec["hash"])))
    paths = []
    for chain, fh, frontier in zip(chains, files, frontiers, strict=False):
        if close:
            body = {"schema": "ledgergate.audit/v1", "kind": "checkpoint", "tree_size": frontier.size,
                    "root": base64.b64encode(frontier.root()).decode()}
            _rec, line = chain.seal_line(body, start_ms + span_ms)
            fh.write(line + b"\n")
        paths.append(Path(fh.name))
        fh.close()
    return paths
