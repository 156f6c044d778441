"""The local folder's report file: the signed report and its signature in one
file, optionally envelope-encrypted. Pure functions over bytes (no I/O).

Plain file (valid JSON, readable by any tool):

    {"signature":"<128 hex digits>","report":<the canonical report, verbatim>}

The signed bytes are cut out at fixed offsets, never re-serialised, so the
signature checks against exactly what was signed.

Encrypted file (envelope encryption, AES-256-GCM): a fresh data key per file
encrypts the plain file; the configured key-encryption key (KEK) encrypts the
data key. Both carry the file's storage key as associated data, so a file
moved under another task's name no longer opens.

    MAGIC | kek id (8) | nonce (12) | wrapped data key (48) | nonce (12) | ciphertext
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"VRENC1"
KEY_BYTES = 32
_NONCE = 12
_WRAPPED = KEY_BYTES + 16  # the data key and its GCM tag
_HEAD = b'{"signature":"'
_SIGNATURE_HEX = 128
_MIDDLE = b'","report":'
_TAIL = b"}"
_BODY_AT = len(_HEAD) + _SIGNATURE_HEX + len(_MIDDLE)


class EnvelopeError(ValueError):
    """A report file that cannot be opened: damaged, or the wrong key (or none)."""


def pack(body: bytes, signature: bytes) -> bytes:
    if len(signature) != _SIGNATURE_HEX // 2:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return _HEAD + signature.hex().encode("ascii") + _MIDDLE + body + _TAIL


def unpack(data: bytes) -> tuple[bytes, bytes]:
    """(body, signature) of a plain report file."""
    if (
        not data.startswith(_HEAD)
        or data[len(_HEAD) + _SIGNATURE_HEX : _BODY_AT] != _MIDDLE
        or not data.endswith(_TAIL)
    ):
        raise EnvelopeError("not a report file")
    try:
        signature = bytes.fromhex(data[len(_HEAD) : len(_HEAD) + _SIGNATURE_HEX].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("report file with a malformed signature") from None
    return data[_BODY_AT : -len(_TAIL)], signature


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def kek_id(kek: bytes) -> bytes:
    """8 bytes naming a key-encryption key, so a wrong key is told from damage."""
    return hashlib.sha256(b"verifier-report-kek:" + kek).digest()[:8]


def seal(kek: bytes, plaintext: bytes, associated: bytes) -> bytes:
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
    wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, associated)
    ciphertext = AESGCM(data_key).encrypt(data_nonce, plaintext, associated)
    return MAGIC + kek_id(kek) + wrap_nonce + wrapped + data_nonce + ciphertext


def open_sealed(kek: bytes | None, data: bytes, associated: bytes) -> bytes:
    if not is_sealed(data):
        raise EnvelopeError("not an encrypted report file")
    if not kek:
        raise EnvelopeError("the report is encrypted and no encryption key is configured")
    at = len(MAGIC)
    named, at = data[at : at + 8], at + 8
    if named != kek_id(kek):
        raise EnvelopeError("the report is encrypted with another key than the configured one")
    wrap_nonce, at = data[at : at + _NONCE], at + _NONCE
    wrapped, at = data[at : at + _WRAPPED], at + _WRAPPED
    data_nonce, at = data[at : at + _NONCE], at + _NONCE
    try:
        data_key = AESGCM(kek).decrypt(wrap_nonce, wrapped, associated)
        return AESGCM(data_key).decrypt(data_nonce, data[at:], associated)
    except InvalidTag:
        raise EnvelopeError("the encrypted report is damaged or was moved") from None
