"""API keys, the domain: what a valid key request is, and what is stored."""

from __future__ import annotations

import pytest

from services.tasks.identity import generate_key, hash_key, validate_key_id, validate_new_key
from shared import errors


def test_a_key_is_random_prefixed_and_stored_only_as_its_hash() -> None:
    key_id, secret = generate_key()
    _, other = generate_key()
    assert secret.startswith("vk_") and len(secret) >= 40 and secret != other
    assert len(key_id) == 16 and validate_key_id(key_id) == key_id
    digest = hash_key(secret)
    assert len(digest) == 64 and secret not in digest and digest == hash_key(secret)


def test_new_key_needs_known_scopes_and_defaults_its_owner_to_its_name() -> None:
    new = validate_new_key("ci", "", ["tasks.read", "tasks.submit"])
    assert new.owner == "ci" and new.scopes == ("tasks.submit", "tasks.read")
    for name, owner, scopes, field in (
        ("", "", ["admin"], "name"),
        ("ci", "", [], "scopes"),
        ("ci", "", ["root"], "scopes"),
        ("ci", "x" * 200, ["admin"], "owner"),
    ):
        with pytest.raises(errors.InvalidArgument) as refused:
            validate_new_key(name, owner, scopes)
        assert refused.value.field == field
    with pytest.raises(errors.InvalidArgument):
        validate_key_id("not-an-id")
