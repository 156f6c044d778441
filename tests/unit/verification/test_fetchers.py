"""Evidence fetchers against a real local HTTP server with recorded responses,
and the SSRF guard."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.verification.chain import ChainEvidence, with_fetched
from services.verification.collateral import CollateralStore
from services.verification.engine import VerificationEngine
from services.verification.errors import FetchFailed, FetchNotAllowed, FetchRejected
from services.verification.fetchers import EvidenceFetcher, UrlGuard
from services.verification.model import CheckStatus, Evidence, VerificationRequest
from services.verification.settings import VerificationSettings

from .recorded_http import recorded_server
from .support import (
    APP_ID,
    AT_90C06F,
    DCAP,
    DSTACK,
    HW_OS_SRC,
    make_chain,
)

VECTOR = json.loads((DSTACK / "quote-report.json").read_text())
APP_COMPOSE = '{"manifest_version":2,"name":"recorded"}'


def _settings(base: str, **changes: Any) -> VerificationSettings:
    fields: dict[str, Any] = {
        "phala_cloud_api_url": base,
        "redpill_api_url": base,
        # The Info endpoint normally lives on https://{app_id}-8090.{domain}; the
        # recorded server stands in for it.
        "phala_app_info_url_template": base + "/info/{app_id}/{domain}/prpc/Info",
        "allowed_fetch_hosts": ("127.0.0.1",),
        "fetch_allow_private_networks": ("127.0.0.1/32",),
        "fetch_timeout_seconds": 5.0,
    }
    fields.update(changes)
    return VerificationSettings(**fields)


def _phala_routes() -> dict[str, tuple[int, Any]]:
    pem, _ = make_chain()
    return {
        f"/api/v1/apps/{APP_ID}/attestations": (
            200,
            {
                "app_id": APP_ID,
                "instances": [
                    {},  # a stopped instance: no quote
                    {
                        "quote": "0x" + VECTOR["quote"],
                        "eventlog": json.loads(VECTOR["event_log"]),
                        "image_version": "dstack-nvidia-0.5.3",
                    },
                ],
            },
        ),
        f"/info/{APP_ID}/app.example.com/prpc/Info": (
            200,
            {
                "app_id": APP_ID,
                "tcb_info": json.dumps({"app_compose": APP_COMPOSE, "rtmr3": "00"}),
                "vm_config": VECTOR["vm_config"],
                "app_cert": pem,
            },
        ),
    }


async def test_phala_cloud_fetch_builds_evidence() -> None:
    with recorded_server(_phala_routes()) as (base, log):
        fetcher = EvidenceFetcher(_settings(base))
        try:
            chain = await fetcher.fetch_phala_cloud(APP_ID, "app.example.com")
        finally:
            await fetcher.aclose()
    assert [p.part for p in chain.instances] == ["app/instance:1"]  # the stopped one is out
    evidence = chain.instances[0].evidence
    assert evidence.quote == bytes.fromhex(VECTOR["quote"])
    assert evidence.app_compose == APP_COMPOSE
    assert evidence.vm_config == VECTOR["vm_config"]
    assert evidence.certificate_chain and "BEGIN CERTIFICATE" in evidence.certificate_chain
    assert [entry["path"] for entry in log] == [
        f"/api/v1/apps/{APP_ID}/attestations",
        f"/info/{APP_ID}/app.example.com/prpc/Info",
    ]


async def test_fetched_evidence_verifies_and_compose_text_is_checked() -> None:
    with recorded_server(_phala_routes()) as (base, _):
        fetcher = EvidenceFetcher(_settings(base))
        task = VerificationRequest(
            evidence=Evidence(quote=b"\x00"),  # replaced by what the fetcher brings
            evaluated_at=AT_90C06F,
            app_id=APP_ID,
            app_config_type="phala_cloud",
            model_or_domain="app.example.com",
            flags=HW_OS_SRC,
        )
        fetched = await fetcher.fetch(task)
        await fetcher.aclose()
    assert isinstance(fetched, ChainEvidence)
    report = VerificationEngine(collateral_store=CollateralStore(local_dir=DCAP)).verify(
        with_fetched(task, fetched)
    )
    app = {r.name: r for r in report.part_checks if r.part == "app/instance:1"}
    assert app["hardware"].status is CheckStatus.PASSED
    assert app["os"].status is CheckStatus.PASSED
    # The recorded compose text is not the deployed one: the hash must not match.
    assert "differs from sha256 of the app-compose text" in app["source_code"].reason
    # This recorded response has no KMS and no gateway: the chain cannot pass.
    kms = [r for r in report.part_checks if r.part == "kms"]
    assert kms and all(r.status is CheckStatus.ERROR for r in kms)
    assert "no kms_guest_agent_info" in kms[0].reason
    assert report.verdict == "failed"


async def test_redpill_fetch_builds_evidence() -> None:
    routes = {
        "/v1/attestation/report": (
            200,
            {
                "signing_address": "0x00",
                "intel_quote": VECTOR["quote"],
                "event_log": json.loads(VECTOR["event_log"]),
                "info": {
                    "tcb_info": {"app_compose": APP_COMPOSE},
                    "vm_config": VECTOR["vm_config"],
                },
            },
        )
    }
    with recorded_server(routes) as (base, log):
        fetcher = EvidenceFetcher(_settings(base, redpill_api_key="secret-key"))
        evidence = await fetcher.fetch_redpill("phala/deepseek-chat-v3-0324")
        await fetcher.aclose()
    assert evidence.quote == bytes.fromhex(VECTOR["quote"])
    assert evidence.app_compose == APP_COMPOSE
    assert log[0]["query"] == "model=phala%2Fdeepseek-chat-v3-0324"
    assert log[0]["path"] == "/v1/attestation/report"  # the bare base plus the path, once
    assert log[0]["authorization"] == "Bearer secret-key"


async def test_server_error_is_transient_and_not_found_is_not() -> None:
    routes = {f"/api/v1/apps/{APP_ID}/attestations": (503, {"error": "down"})}
    with recorded_server(routes) as (base, _):
        fetcher = EvidenceFetcher(_settings(base))
        with pytest.raises(FetchFailed, match="503"):
            await fetcher.fetch_phala_cloud(APP_ID)
        with pytest.raises(FetchRejected, match="404"):
            await fetcher.fetch_phala_cloud("ab" * 20)
        await fetcher.aclose()


async def test_oversized_response_is_refused() -> None:
    routes = {"/v1/attestation/report": (200, b"[" + b"0," * 5000 + b"0]")}
    with recorded_server(routes) as (base, _):
        fetcher = EvidenceFetcher(_settings(base, max_response_bytes=1000))
        with pytest.raises(FetchRejected, match="more than 1000 bytes"):
            await fetcher.fetch_redpill("m")
        await fetcher.aclose()


async def test_loopback_is_refused_without_the_opt_in() -> None:
    with recorded_server(_phala_routes()) as (base, log):
        fetcher = EvidenceFetcher(_settings(base, fetch_allow_private_networks=()))
        with pytest.raises(FetchNotAllowed, match="not globally routable"):
            await fetcher.fetch_phala_cloud(APP_ID)
        await fetcher.aclose()
    assert log == []  # refused before any request was sent


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example.com/x",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1.evil.example.com/",
    ],
)
async def test_guard_refuses_hosts_outside_the_patterns(url: str) -> None:
    with pytest.raises(FetchNotAllowed):
        await UrlGuard(("127.0.0.1", "*.phala.network"), ("127.0.0.0/8",)).check(url)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "169.254.169.254",
        "192.168.1.1",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.100.100.200",  # 100.64.0.0/10, a cloud metadata address
        "100.64.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1 (Python counts 2002::/16 as global)
        "2002:808:808::1",  # 6to4 of a public address: refused all the same
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "198.18.0.1",
        "fc00::1",
        "224.0.0.1",
    ],
)
async def test_guard_refuses_every_address_that_is_not_global(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(FetchNotAllowed, match="not globally routable"):
        await UrlGuard(("*",)).check(f"http://{host}/")


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
async def test_guard_allows_global_addresses(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    assert await UrlGuard(("*",)).check(f"http://{host}/") == address


async def test_an_allowed_private_network_is_reachable_and_only_it() -> None:
    guard = UrlGuard(("*",), ("10.1.0.0/16",))
    assert await guard.check("http://10.1.2.3/") == "10.1.2.3"
    with pytest.raises(FetchNotAllowed):
        await guard.check("http://10.2.0.1/")
    with pytest.raises(FetchNotAllowed):
        await UrlGuard(("pccs.internal",), ("10.1.0.0/16",)).check("http://10.1.2.3/")


async def test_request_goes_to_the_address_the_guard_checked() -> None:
    """DNS rebinding: a name that resolves to a public address when checked and
    to a private one at connect time must not reach the private one. The
    request is bound to the checked address, so the second answer is never
    asked for; the server still sees the original Host."""
    answers: list[list[str]] = [["127.0.0.1"], ["10.9.9.9"]]  # checked, then "rebound"
    asked: list[str] = []

    async def rebinding_resolver(host: str) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    with recorded_server(_phala_routes()) as (base, log):
        port = base.rsplit(":", 1)[1]
        named = f"http://api.evidence.test:{port}"
        settings = _settings(named, allowed_fetch_hosts=("api.evidence.test",))
        fetcher = EvidenceFetcher(settings, resolve=rebinding_resolver)
        try:
            chain = await fetcher.fetch_phala_cloud(APP_ID)
        finally:
            await fetcher.aclose()
    assert chain.instances[0].evidence.quote == bytes.fromhex(VECTOR["quote"])
    assert asked == ["api.evidence.test"]  # resolved once, by the guard
    assert [entry["host"] for entry in log] == [f"api.evidence.test:{port}"]


async def test_pinned_https_request_keeps_the_name_for_sni_and_certificates() -> None:
    async def resolve(host: str) -> list[str]:
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    pinned = await UrlGuard(("*.phala.network",), resolve=resolve).pin(
        "https://cloud-api.phala.network/api/v1/apps/ab/attestations?x=1"
    )
    assert str(pinned.url) == "https://93.184.215.14/api/v1/apps/ab/attestations?x=1"
    assert pinned.headers == {"host": "cloud-api.phala.network"}
    assert pinned.extensions == {"sni_hostname": "cloud-api.phala.network"}


async def test_one_private_address_among_public_ones_is_refused() -> None:
    async def resolve(host: str) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    with pytest.raises(FetchNotAllowed, match=r"10\.0\.0\.7"):
        await UrlGuard(("*.phala.network",), resolve=resolve).pin("https://x.phala.network/")


@pytest.mark.parametrize("app_id", ["../../admin", "abc/def", "zz"])
async def test_app_id_from_task_cannot_shape_the_path(app_id: str) -> None:
    fetcher = EvidenceFetcher(_settings("http://127.0.0.1:9"))
    with pytest.raises(FetchNotAllowed):
        await fetcher.fetch_phala_cloud(app_id)
    await fetcher.aclose()


async def test_phala_cloud_fetch_attaches_the_gateways_acme_info_when_domain_checks_are_on() -> (
    None
):
    # Recorded stand-in for a gateway's /.dstack/acme-info (no public capture exists).
    acme = {
        "account_uri": "https://acme-v02.api.letsencrypt.org/acme/acct/1",
        "account_quote": json.dumps({"quote": VECTOR["quote"], "event_log": VECTOR["event_log"]}),
        "quoted_hist_keys": [],
    }
    routes = _phala_routes()
    with recorded_server(routes) as (base, log):
        _, doc = routes[f"/api/v1/apps/{APP_ID}/attestations"]
        doc["kms_info"] = {"gateway_app_url": f"{base}/gw"}
        routes["/gw/.dstack/acme-info"] = (200, acme)
        fetcher = EvidenceFetcher(_settings(base))
        try:
            plain = await fetcher.fetch_phala_cloud(APP_ID)
            with_acme = await fetcher.fetch_phala_cloud(APP_ID, acme_info=True)
        finally:
            await fetcher.aclose()
    assert plain.instances[0].evidence.acme_info is None
    attached = with_acme.instances[0].evidence.acme_info
    assert attached is not None and json.loads(attached) == acme
    assert [entry["path"] for entry in log].count("/gw/.dstack/acme-info") == 1
