"""The report PUT's SigV4 (services/verification/s3.py) against botocore's own
S3 signer: the same request signed at the same moment carries the same
Authorization, with and without a session token."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from services.verification.s3 import _host_header, sigv4_headers

NOW = datetime(2026, 12, 1, 23, 30, 5, tzinfo=UTC)
BODY = b'{"verdict":"passed","checks":[]}'
HEADERS = {
    "Content-Type": "application/json",
    "x-amz-meta-signature": "ab" * 64,
    "If-None-Match": "*",
    "x-amz-server-side-encryption": "aws:kms",
}


def _botocore(url: str, token: str | None) -> dict[str, str]:
    request = AWSRequest(method="PUT", url=url, data=BODY, headers=dict(HEADERS))
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(credentials, "s3", "eu-west-1").add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEBYaD-session"])
@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com"]
)
def test_the_signature_is_botocores(endpoint: str, token: str | None) -> None:
    path = "/reports-bucket/reports/3f6c2a8e-0000-4000-8000-000000000001/2.json"
    ours = sigv4_headers(
        path=path,
        host=_host_header(endpoint),
        headers=HEADERS,
        body=BODY,
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        token=token or "",
        region="eu-west-1",
        now=NOW,
    )
    theirs = _botocore(endpoint + path, token)
    ours_lower = {name.lower(): value for name, value in ours.items()}
    assert ours_lower["authorization"] == theirs["authorization"]
    for name in ("x-amz-date", "x-amz-content-sha256"):
        assert ours_lower[name] == theirs[name]
    assert ours_lower.get("x-amz-security-token") == theirs.get("x-amz-security-token")


def test_the_host_header_leaves_out_a_default_port() -> None:
    assert _host_header("http://127.0.0.1:8333") == "127.0.0.1:8333"
    assert _host_header("https://S3.example.com:443/base") == "s3.example.com"
    assert _host_header("http://minio:80") == "minio"
