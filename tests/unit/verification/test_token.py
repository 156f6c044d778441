"""Attestation-result token claims and the whole-number rule, on the real
quote-report.json vector's reports (passed, and failed by a wrong compose
hash). The signature is checked with joserfc, not with our code."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import struct_pb2
from joserfc import jwt
from joserfc.jwk import KeySet
from verifier.verification.v1 import verification_pb2 as pb

from services.gateway.rest_json import message_to_json
from services.verification.engine import VerificationEngine
from services.verification.report import canonical_json, public_key_bytes, sign_report
from services.verification.token import attestation_token, claims, jwk
from shared.jsonnum import whole_numbers

from .support import APP_ID, quote_report_request

ISSUED = datetime(2026, 3, 5, 11, 0, tzinfo=UTC)


def _signed(**changes: object) -> tuple[dict[str, object], bytes]:
    report = VerificationEngine().verify(quote_report_request(app_id=APP_ID, **changes))
    signed = sign_report(report, Ed25519PrivateKey.generate())
    return json.loads(signed.body), signed.body


def test_failed_report_is_contraindicated_and_names_the_failed_check() -> None:
    document, body = _signed(expected_compose_hash="00" * 32)
    submod = claims(document, body, ISSUED)["submods"]["dstack"]
    assert submod["ear.status"] == "contraindicated"
    assert submod["x-dstack.checks"]["source_code"] == "failed"
    assert submod["ear.trustworthiness-vector"]["configuration"] == 96
    assert submod["ear.trustworthiness-vector"]["hardware"] == 2


def test_token_signature_checks_with_joserfc_and_a_foreign_key_does_not() -> None:
    document, body = _signed()
    key = Ed25519PrivateKey.generate()
    token = attestation_token(document, body, key, ISSUED)
    keys = KeySet.import_key_set({"keys": [jwk(public_key_bytes(key))]})
    decoded = jwt.decode(token, keys, algorithms=["EdDSA"])
    assert decoded.claims["iat"] == int(ISSUED.timestamp())
    assert decoded.claims["submods"]["dstack"]["ear.status"] == "affirming"
    other = KeySet.import_key_set({"keys": [jwk(public_key_bytes(Ed25519PrivateKey.generate()))]})
    with pytest.raises(Exception):  # noqa: B017 - joserfc: no key with that kid
        jwt.decode(token, other, algorithms=["EdDSA"])


def test_whole_numbers_survive_a_struct_and_the_gateway() -> None:
    document, body = _signed()
    struct = struct_pb2.Struct()
    struct.update(document)
    rest = message_to_json(pb.GetReportResponse(report=struct))["report"]
    assert canonical_json(rest) == body
    assert whole_numbers({"x": 2.0**60, "y": 2.5, "z": [3.0]}) == {"x": 2.0**60, "y": 2.5, "z": [3]}
