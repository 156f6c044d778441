"""check_signature: the engine's Ed25519 signatures (cryptography) checked with libsodium."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import VerifyKey

from services.tasks.signing import SummaryRejected, check_signature


def _keys() -> tuple[Ed25519PrivateKey, VerifyKey]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, VerifyKey(raw)


def test_the_engines_signature_verifies() -> None:
    private, key = _keys()
    check_signature(key, b"summary", private.sign(b"summary").hex())


@pytest.mark.parametrize(
    "signature",
    [
        "not hex",
        "ab" * 63,  # 63 bytes
        "ab" * 65,
        "",
    ],
)
def test_a_signature_of_the_wrong_shape_is_rejected(signature: str) -> None:
    _, key = _keys()
    with pytest.raises(SummaryRejected):
        check_signature(key, b"summary", signature)


def test_other_bytes_or_another_key_are_rejected() -> None:
    private, key = _keys()
    other, _ = _keys()
    with pytest.raises(SummaryRejected):
        check_signature(key, b"summary!", private.sign(b"summary").hex())
    with pytest.raises(SummaryRejected):
        check_signature(key, b"summary", other.sign(b"summary").hex())
