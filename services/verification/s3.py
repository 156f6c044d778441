"""One S3 client construction for every store the verification service keeps
in its bucket (reports, OS image entries, public keys), and the lean PUT the
report store writes every report with.

boto3's put_object cost about 2.2 ms of CPU per report in a py-spy profile of
the pipeline (its event hooks, parameter validation and serialisation, the
request checksum it computes in Python, its endpoint resolution): more than
the quote verification itself, and botocore's signer alone about half a
millisecond. `SignedPut` sends the same request (path-style URL, the same
headers, SigV4 computed here with hashlib/hmac, checked against botocore's
S3 signer in tests/unit/verification/test_s3_signing.py) over kept-alive
connections of its own (http1.py: urllib3 cost another 0.6 ms a PUT), a
batch's PUTs side by side, and answers an S3 error as boto3 does, with a
botocore ClientError carrying the error code and the HTTP status.
Credentials come from botocore's chain (the settings' keys, or the
environment, an instance role, ...), read per request (they may refresh).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from shared.retry import Backoff

from .http1 import Http1Client
from .settings import ReportStoreSettings

# As boto3's standard retry mode: 3 attempts on a connection fault or a
# throttling/5xx answer.
_ATTEMPTS = 3
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_BACKOFF = Backoff(base_seconds=0.1, cap_seconds=2.0)
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")


def s3_client(settings: ReportStoreSettings) -> Any:
    import boto3  # imported here: pool workers and the CLI never need it
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


class SignedPut:
    """PutObject on one bucket, signed with SigV4 and sent on a pooled
    connection; safe to call from several threads."""

    def __init__(self, settings: ReportStoreSettings, credentials: Any) -> None:
        endpoint = urlsplit(settings.s3_endpoint)
        self._base = f"{endpoint.path.rstrip('/')}/{quote(settings.s3_bucket)}/"
        self._credentials = credentials
        self._region = settings.s3_region
        self._host = _host_header(settings.s3_endpoint)
        self._http = Http1Client(settings.s3_endpoint, connect_timeout=10.0, read_timeout=60.0)
        self._lock = threading.Lock()
        # Called with the signed headers of each request before it is sent (tests).
        self.on_send: Callable[[dict[str, str]], None] | None = None

    @classmethod
    def of(cls, settings: ReportStoreSettings) -> SignedPut | None:
        """The lean PUT for these settings, or None when they name no endpoint
        or the credential chain has nothing (boto3 then does every call)."""
        if not settings.s3_endpoint:
            return None
        import botocore.session

        session = botocore.session.get_session()
        if settings.s3_access_key_id:
            session.set_credentials(settings.s3_access_key_id, settings.s3_secret_access_key)
        credentials = session.get_credentials()
        return cls(settings, credentials) if credentials is not None else None

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        """PUT `body` under `key` with `headers` (Content-Type, x-amz-meta-*,
        If-None-Match, SSE); raises botocore's ClientError on an S3 error."""
        (error,) = self.put_many([(key, body, headers)])
        if error is not None:
            raise error

    def put_many(self, puts: list[tuple[str, bytes, dict[str, str]]]) -> list[Exception | None]:
        """Each PUT's fault (None: stored), all sent at once (http1.py); a
        connection fault or a 5xx is retried, the others' results stand."""
        results: list[Exception | None] = [None] * len(puts)
        pending = list(range(len(puts)))
        for attempt in range(1, _ATTEMPTS + 1):
            requests = []
            for index in pending:
                key, body, headers = puts[index]
                path = self._base + quote(key, safe="/~")
                signed = self._signed(path, body, headers)
                if self.on_send is not None:
                    self.on_send(signed)
                requests.append(Http1Client.encode("PUT", path, signed, body))
            again = []
            for index, answer in zip(pending, self._http.exchange_many(requests), strict=True):
                last = attempt == _ATTEMPTS
                if isinstance(answer, ConnectionError | TimeoutError) and not last:
                    again.append(index)
                elif isinstance(answer, OSError):
                    results[index] = answer
                elif answer[0] < 300:
                    results[index] = None
                elif answer[0] in _RETRY_STATUS and not last:
                    again.append(index)
                else:
                    results[index] = _client_error(*answer)
            if not again:
                break
            pending = again
            time.sleep(_BACKOFF.delay(attempt))
        return results

    def _signed(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        """The headers with the SigV4 ones, signed over the body's SHA-256 (as
        botocore's S3 signer signs them: tests/unit/verification checks that
        both give the same Authorization)."""
        with self._lock:  # refreshable credentials are read under a lock
            frozen = self._credentials.get_frozen_credentials()
        return sigv4_headers(
            path=path,
            host=self._host,
            headers=headers,
            body=body,
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token or "",
            region=self._region,
            now=datetime.now(UTC),
        )

    def close(self) -> None:
        self._http.close()


def _host_header(url: str) -> str:
    """What the Host header says (and what is signed): the port only when not the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sigv4_headers(
    *,
    path: str,
    host: str,
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    token: str,
    region: str,
    now: datetime,
    method: str = "PUT",
) -> dict[str, str]:
    """AWS Signature Version 4 of one S3 request without a query string: the
    request's headers plus Host, X-Amz-Date, X-Amz-Content-SHA256 (and the
    session token), every one of them signed, and Authorization. `path` is
    sent as given (already percent-encoded; S3 does not normalise it)."""
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    out = {**headers, "Host": host, "X-Amz-Date": amz_date, "X-Amz-Content-SHA256": payload}
    if token:
        out["X-Amz-Security-Token"] = token
    canonical = sorted((name.lower(), " ".join(value.split())) for name, value in out.items())
    signed = ";".join(name for name, _ in canonical)
    request = "\n".join(
        [
            method,
            path,
            "",
            "".join(f"{name}:{value}\n" for name, value in canonical),
            signed,
            payload,
        ]
    )
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    key = _signing_key(secret_key, amz_date[:8], region)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return out


def _client_error(status: int, data: bytes) -> Exception:
    from botocore.exceptions import ClientError

    code = _ERROR_CODE.search(data or b"")
    message = _ERROR_MESSAGE.search(data or b"")
    error = {
        "Code": code.group(1).decode(errors="replace") if code else str(status),
        "Message": message.group(1).decode(errors="replace") if message else "",
    }
    response: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")
