"""Encryption at rest, as configured: checked at load time, secrets masked."""

from __future__ import annotations

import base64

import pytest

from services.verification.settings import VerificationSettings
from shared.config import MASK, ConfigError, load_settings

KEY = bytes(range(32))


def test_s3_sse_takes_only_the_s3_algorithms() -> None:
    assert load_settings(VerificationSettings, env={"S3_SSE": "AES256"}).s3_sse == "AES256"
    with pytest.raises(ConfigError) as caught:
        load_settings(VerificationSettings, env={"S3_SSE": "DES"})
    assert caught.value.field == "s3_sse"


@pytest.mark.parametrize("text", [KEY.hex(), base64.b64encode(KEY).decode()])
def test_the_folder_key_is_32_bytes_in_hex_or_base64(text: str) -> None:
    settings = load_settings(VerificationSettings, env={"REPORT_ENCRYPTION_KEY": text})
    assert settings.report_store.local_encryption_key == KEY
    assert settings.masked()["report_encryption_key"] == MASK


@pytest.mark.parametrize("text", ["abc", "00" * 31, base64.b64encode(bytes(16)).decode()])
def test_a_key_of_another_size_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(VerificationSettings, env={"REPORT_ENCRYPTION_KEY": text})
    assert caught.value.field == "report_encryption_key"
    assert text not in str(caught.value)


def test_sse_settings_reach_the_report_store() -> None:
    settings = load_settings(
        VerificationSettings,
        env={"S3_ENDPOINT": "http://127.0.0.1:9", "S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "k1"},
    )
    store = settings.report_store
    assert (store.s3_sse, store.s3_sse_kms_key_id) == ("aws:kms", "k1")
