"""The verification service's fetch settings, as an operator sets them."""

from __future__ import annotations

import fnmatch
from urllib.parse import urlsplit

import pytest

from services.verification.settings import VerificationSettings
from shared.config import ConfigError, load_settings


def test_defaults_are_bare_bases_whose_hosts_are_allowed() -> None:
    settings = load_settings(VerificationSettings, env={})
    assert settings.phala_cloud_api_url == "https://cloud-api.phala.com"
    assert settings.redpill_api_url == "https://api.redpill.ai"
    for url in (settings.phala_cloud_api_url, settings.redpill_api_url):
        host = urlsplit(url).hostname or ""
        assert any(fnmatch.fnmatchcase(host, p) for p in settings.allowed_fetch_hosts), host
    assert settings.fetch_allow_private_networks == ()
    assert settings.trusted_kms_ca_pubkeys == ()


def test_operator_settings_reach_the_engine() -> None:
    env = {
        "REDPILL_API_KEY": "k-123",
        "FETCH_ALLOW_PRIVATE_NETWORKS": "10.1.0.0/16, 127.0.0.1/32",
        "TRUSTED_KMS_CA_PUBKEYS": "0x3059aa,3059bb",
        "PHALA_CLOUD_API_URL": "http://127.0.0.1:8080",
    }
    settings = load_settings(VerificationSettings, env=env)
    assert settings.redpill_api_key == "k-123"
    assert settings.fetch_allow_private_networks == ("10.1.0.0/16", "127.0.0.1/32")
    assert settings.trusted_kms_ca_pubkeys == ("0x3059aa", "3059bb")
    assert settings.phala_cloud_api_url == "http://127.0.0.1:8080"
    assert "k-123" not in repr(settings)
    assert load_settings(VerificationSettings, env=env).masked()["redpill_api_key"] == "********"


@pytest.mark.parametrize(
    ("name", "value"),
    [("FETCH_ALLOW_PRIVATE_NETWORKS", "10.1.0.0/33"), ("TRUSTED_KMS_CA_PUBKEYS", "zz")],
)
def test_a_bad_value_names_its_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(VerificationSettings, env={name: value})
    assert caught.value.field == name.lower()
