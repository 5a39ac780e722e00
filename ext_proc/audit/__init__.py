"""Audit evidence: canonical JSON, hash-chained Ed25519-signed records, durable group commit."""
