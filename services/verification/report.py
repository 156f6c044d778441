"""Canonical JSON of a report and its Ed25519 signature.

Canonical = sorted keys, no whitespace, UTF-8: the bytes that are signed are
the bytes stored, and anyone can re-check them offline with the public key.
The signed document names its key (`signing_key_id`), so a report signed
before a key rotation, or by another replica, still says which key to use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.jsonnum import whole_numbers

from .model import Report


def canonical_json(document: Any) -> bytes:
    # Whole numbers as integers: what a reader gets back from a
    # protobuf Struct (doubles) then re-canonicalises to the same bytes.
    return json.dumps(
        whole_numbers(document),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


@dataclass(frozen=True)
class SignedReport:
    body: bytes  # canonical JSON
    signature: bytes  # 64-byte Ed25519 signature over body
    public_key: bytes  # 32-byte raw Ed25519 public key
    document: dict[str, Any]  # what `body` encodes (kept to skip parsing it back)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


SIGNING_KEY_ID_FIELD = "signing_key_id"
ATTEMPT_FIELD = "attempt"


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    """A key's id: hex sha256 of its raw 32-byte public key."""
    raw = key if isinstance(key, bytes) else public_key_bytes(key)
    return hashlib.sha256(raw).hexdigest()


def sign_report(report: Report, key: Ed25519PrivateKey, attempt: int = 0) -> SignedReport:
    """Sign the report of `attempt` (the task's lease; 0 outside the task
    lifecycle). The attempt is signed with it: a report cannot be replayed as
    another attempt's."""
    public = public_key_bytes(key)
    document = report.to_dict()
    document[SIGNING_KEY_ID_FIELD] = key_id(public)
    document[ATTEMPT_FIELD] = attempt
    body = canonical_json(document)
    return SignedReport(body=body, signature=key.sign(body), public_key=public, document=document)


def signing_key_id(document: dict[str, Any]) -> str:
    """The id of the key a signed report names; "" for a report without one."""
    value = document.get(SIGNING_KEY_ID_FIELD)
    return value if isinstance(value, str) else ""


def verify_report_signature(
    report_bytes: bytes, signature: bytes, public_key: bytes | Ed25519PublicKey
) -> bool:
    """True when `signature` is the Ed25519 signature of `report_bytes`.

    `public_key` may be the 32 raw bytes, a PEM SubjectPublicKeyInfo, or a key object.
    """
    if isinstance(public_key, Ed25519PublicKey):
        key = public_key
    elif len(public_key) == 32:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    else:
        loaded = serialization.load_pem_public_key(public_key)
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        key = loaded
    try:
        key.verify(signature, report_bytes)
    except InvalidSignature:
        return False
    return True


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the PEM (PKCS#8) key at `path`, or create it there on first start (mode 0600)."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return loaded
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting together must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_signing_key(path)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
