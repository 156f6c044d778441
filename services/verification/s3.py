"""One S3 client construction for every store the verification service keeps
in its bucket (reports, OS image entries, public keys)."""

from __future__ import annotations

from typing import Any

from .settings import ReportStoreSettings


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
