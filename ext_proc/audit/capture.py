"""Encrypted capture for legal hold: the raw request body (and the response as delivered) sealed with AES-256-GCM under a
deployer key, bound to its record by the request id as associated data. Off unless configured;
without the key the record holds only ciphertext."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALG = "AES-256-GCM"
# Associated data of a response capture: the request id followed by this suffix.
RESPONSE_CAPTURE_AAD = b"\x00response"


def seal_capture(key: bytes, key_id: str, plaintext: bytes, aad: bytes) -> dict[str, Any]:
    if len(key) != 32:
        raise ValueError("the capture key must be 32 bytes")
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plaintext, aad)
    return {"alg": ALG, "key_id": key_id, "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ct).decode()}


@dataclass(frozen=True, slots=True)
class CaptureKey:
    """The deployer's capture key and the id recorded beside what it seals: one value, so a
    configured capture always has both."""

    key: bytes
    key_id: str

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, Any]:
        return seal_capture(self.key, self.key_id, plaintext, aad)


def open_capture(key: bytes, envelope: dict[str, Any], aad: bytes) -> bytes:
    if envelope.get("alg") != ALG:
        raise ValueError("unknown capture algorithm")
    return AESGCM(key).decrypt(base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["ciphertext"]), aad)
