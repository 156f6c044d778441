"""The access policy, key caching, token buckets and the number checks, without
a server (the servers' behaviour is in tests/integration/auth)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from pathlib import Path

import pytest
from cryptography import x509

from shared import errors
from shared.auth import (
    Authorizer,
    CachedValidator,
    InternalOnly,
    InvalidCredentials,
    MissingCredentials,
    NoPolicy,
    RateLimited,
    RateRules,
    ScopeMissing,
    bearer_token,
    rule_for,
)
from shared.json_numbers import non_finite_path, parse_constant, parse_float
from shared.principal import KIND_KEY, SCOPE_ADMIN, SCOPE_READ, SCOPE_SUBMIT, Identity
from shared.ratelimit import BucketRule, MemoryRateLimiter, retry_after_seconds
from shared.tls import CertPaths, ensure_dev_certs, issue

KEY = "vk_" + "a" * 43


def _key(*scopes: str, owner: str = "alice") -> Identity:
    return Identity(KIND_KEY, "k", owner, frozenset(scopes), "0123456789abcdef")


def test_admin_implies_every_scope_and_submitters_see_only_their_owner() -> None:
    admin = _key(SCOPE_ADMIN)
    assert admin.has(SCOPE_SUBMIT) and admin.has(SCOPE_READ) and admin.sees_all_tasks
    submitter = _key(SCOPE_SUBMIT)
    assert not submitter.sees_all_tasks and submitter.owner_filter == "alice"
    assert submitter.can_see("alice") and not submitter.can_see("bob")
    assert not _key(SCOPE_SUBMIT, owner="").can_see("")  # no owner sees nothing
    assert Identity.service("queue").sees_all_tasks and Identity.system().sees_all_tasks
    assert KEY not in repr(Identity(KIND_KEY, "k", token=KEY))  # never in a log line


def test_policy_rules_cover_internal_open_and_unknown_methods() -> None:
    assert rule_for("/verifier.tasks.v1.TaskWorkerService/CompleteTasks").internal  # type: ignore[union-attr]
    assert rule_for("/verifier.tasks.v1.TaskWorkerService/Anything").internal  # type: ignore[union-attr]
    assert rule_for("/verifier.queue.v1.QueueIntakeService/X").internal  # type: ignore[union-attr]
    assert rule_for("/verifier.verification.v1.VerificationEngineService/X").internal  # type: ignore[union-attr]
    assert rule_for("/grpc.health.v1.Health/Check").open  # type: ignore[union-attr]
    assert rule_for("/verifier.tasks.v1.TaskService/NewThing") is None


def test_bearer_token_reads_only_the_bearer_scheme() -> None:
    assert bearer_token({"authorization": f"Bearer {KEY}"}) == KEY
    assert bearer_token({"authorization": f"bearer  {KEY} "}) == KEY
    assert bearer_token({"authorization": f"Basic {KEY}"}) == ""
    assert bearer_token({}) == ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_validator_caches_answers_for_its_ttl_and_refuses_malformed_tokens() -> None:
    calls: list[str] = []
    valid = {KEY}

    async def lookup(token: str) -> Identity | None:
        calls.append(token)
        return _key(SCOPE_SUBMIT) if token in valid else None

    clock = FakeClock()
    validator = CachedValidator(lookup, ttl=10.0, negative_ttl=2.0, clock=clock)
    assert (await validator.validate(KEY)) is not None
    assert (await validator.validate(KEY)).token == KEY  # type: ignore[union-attr]
    assert calls == [KEY]
    assert await validator.validate("not-our-format") is None
    assert calls == [KEY]  # no lookup for a malformed token
    valid.clear()  # revoked
    clock.now += 9.0
    assert await validator.validate(KEY) is not None  # still cached
    clock.now += 1.5
    assert await validator.validate(KEY) is None  # asked again after the ttl
    assert calls == [KEY, KEY]


async def test_validator_makes_one_lookup_for_concurrent_misses() -> None:
    calls = 0

    async def lookup(token: str) -> Identity | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return _key(SCOPE_SUBMIT)

    validator = CachedValidator(lookup, ttl=10.0)
    results = await asyncio.gather(*(validator.validate(KEY) for _ in range(20)))
    assert calls == 1 and all(r is not None for r in results)


async def test_authorizer_decides_by_rule_scope_peer_and_bucket() -> None:
    async def lookup(token: str) -> Identity | None:
        return _key(SCOPE_READ) if token == KEY else None

    limiter = MemoryRateLimiter(clock=FakeClock())
    authorizer = Authorizer(
        CachedValidator(lookup, ttl=5),
        limiter,
        RateRules(create=BucketRule(1, 1), read=BucketRule(1, 2)),
    )
    tasks = "/verifier.tasks.v1.TaskService/"
    bearer = {"authorization": f"Bearer {KEY}"}
    with pytest.raises(MissingCredentials):
        await authorizer.authorize(tasks + "GetTask", {}, lambda: "")
    with pytest.raises(InvalidCredentials):
        await authorizer.authorize(tasks + "GetTask", {"authorization": "Bearer vk_x"}, lambda: "")
    with pytest.raises(ScopeMissing):
        await authorizer.authorize(tasks + "CreateTask", bearer, lambda: "")
    with pytest.raises(InternalOnly):
        await authorizer.authorize(
            "/verifier.tasks.v1.TaskWorkerService/CompleteTasks", bearer, lambda: ""
        )
    with pytest.raises(NoPolicy):
        await authorizer.authorize(tasks + "Unknown", bearer, lambda: "queue")
    served = await authorizer.authorize(
        "/verifier.tasks.v1.TaskWorkerService/CompleteTasks", {}, lambda: "queue"
    )
    assert served == Identity.service("queue")
    assert await authorizer.authorize("/grpc.health.v1.Health/Check", {}, lambda: "") is None
    await authorizer.authorize(tasks + "GetTask", bearer, lambda: "")
    await authorizer.authorize(tasks + "GetTask", bearer, lambda: "")
    with pytest.raises(RateLimited) as limited:
        await authorizer.authorize(tasks + "GetTask", bearer, lambda: "")
    assert limited.value.retry_after == 1
    assert isinstance(limited.value, errors.ResourceExhausted)


async def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    rule = BucketRule(rate=2.0, burst=3)
    assert [await limiter.take("k", rule) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.take("k", rule)
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    assert await limiter.take("k", rule) == 0.0
    clock.now += 100
    assert [await limiter.take("k", rule) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert await limiter.take("other", rule) == 0.0  # one bucket per key
    assert await limiter.take("k", BucketRule(0, 1)) == 0.0  # rate 0: unlimited
    assert retry_after_seconds(0.01) == 1 and retry_after_seconds(2.2) == 3


async def test_a_batch_draws_one_token_per_item_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    rule = BucketRule(rate=1.0, burst=5)
    assert await limiter.take("k", rule, 3) == 0.0
    assert await limiter.take("k", rule, 3) == pytest.approx(1.0)  # 2 left, 3 wanted
    assert await limiter.take("k", rule, 2) == 0.0
    # Larger than the burst: draws the whole burst (it could never go ahead otherwise).
    clock.now += 100
    assert await limiter.take("k", rule, 50) == 0.0
    assert await limiter.take("k", rule, 1) == pytest.approx(1.0)


async def test_batch_create_is_limited_by_its_tasks_not_by_its_calls() -> None:
    async def lookup(token: str) -> Identity | None:
        return _key(SCOPE_SUBMIT)

    from types import SimpleNamespace

    authorizer = Authorizer(
        CachedValidator(lookup, ttl=5),
        MemoryRateLimiter(clock=FakeClock()),
        RateRules(create=BucketRule(1, 10), read=BucketRule(1, 10)),
    )
    batch = "/verifier.tasks.v1.TaskService/BatchCreateTasks"
    bearer = {"authorization": f"Bearer {KEY}"}
    seven = SimpleNamespace(requests=[object()] * 7)
    await authorizer.authorize(batch, bearer, lambda: "", seven)
    with pytest.raises(RateLimited) as limited:
        await authorizer.authorize(batch, bearer, lambda: "", seven)  # 3 left, 7 wanted
    assert limited.value.retry_after == 4
    # A single create still draws one.
    await authorizer.authorize("/verifier.tasks.v1.TaskService/CreateTask", bearer, lambda: "")


def test_non_finite_numbers_are_found_with_their_path() -> None:
    import json

    data = json.loads(
        '{"a": {"b": [1, 2, NaN]}, "c": 1e999, "d": -Infinity}',
        parse_constant=parse_constant,
        parse_float=parse_float,
    )
    assert non_finite_path(data) == "a.b[2]"
    assert non_finite_path({"x": 1.5, "y": [1, "NaN"], "z": None, "b": True}) is None
    assert non_finite_path({"big": 2**70}) == "big"
    assert non_finite_path({"k": math.inf}, "app_metadata") == "app_metadata.k"


def test_dev_certificates_chain_to_the_ca_and_keys_are_private(tmp_path: Path) -> None:
    made = ensure_dev_certs(tmp_path)
    assert set(made) == {"tasks", "queue", "verification", "gateway"}
    assert ensure_dev_certs(tmp_path) == []  # idempotent
    paths = CertPaths.of(tmp_path, "tasks")
    assert (paths.key.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "ca.key").stat().st_mode & 0o777) == 0o600
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "tasks" in names.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    other = issue(tmp_path / "elsewhere", "tasks")
    stranger = x509.load_pem_x509_certificate(other.cert.read_bytes())
    with pytest.raises(Exception):  # noqa: B017 - any failure: not signed by our CA
        stranger.verify_directly_issued_by(ca)


def test_log_lines_never_carry_keys_or_private_keys() -> None:
    from shared.log import REDACTED, redact_secrets

    line = redact_secrets(
        None,
        "info",
        {
            "event": f"bad header Bearer {KEY}",
            "authorization": f"Bearer {KEY}",
            "error": "x -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- y",
            "task_id": "t",
        },
    )
    assert KEY not in str(line) and "MIIB" not in str(line)
    assert line["authorization"] == REDACTED and line["task_id"] == "t"
    assert line["event"] == f"bad header Bearer {REDACTED}"


def test_check_config_prints_no_secret(tmp_path: Path) -> None:
    from services.tasks.settings import TasksSettings
    from shared.config import MASK, load_settings

    settings = load_settings(
        TasksSettings,
        env={
            "PHALA_CLOUD_API_KEY": "s3cr3t",
            "DATABASE_URL": "postgresql://u:pw@db/x",
        },
    )
    text = str(settings.masked())
    assert "s3cr3t" not in text and ":pw@" not in text
    assert MASK in text
    # Keys and private keys are files, never settings: only their paths are printed.
    assert settings.masked()["tls_dir"] == "" and "admin_key_file" in settings.masked()
