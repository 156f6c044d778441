"""Evidence fetched from the app's attestation endpoints, behind an SSRF guard.

Shapes follow the reference system (Phala-Network/trust-center,
packages/verifier): the Phala Cloud API `GET /api/v1/apps/{app_id}/attestations`
(instances[].quote, instances[].eventlog or instances[].tcb_info.event_log),
the app's own `GET https://{app_id}-8090.{domain}/prpc/Info` (tcb_info.app_compose,
vm_config, app_cert; some fields arrive as JSON text) and redpill's
`GET /v1/attestation/report?model=...` (intel_quote, event_log, info).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.attestation import PHALA_CLOUD_APP_ID, REDPILL_MODEL

from .chain import ChainEvidence, PartEvidence, instance_part
from .errors import FetchFailed, FetchNotAllowed, FetchRejected
from .evidence import evidence_from_dict
from .model import Evidence, VerificationRequest
from .phala_cloud import attestations_url, maybe_json, parse_system_info
from .settings import VerificationSettings

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# IPv6 prefixes that carry an IPv4 address a router may reach on our behalf:
# 6to4 (2002::/16, which Python 3.11 counts as global) and NAT64 (64:ff9b::/96).
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _forbidden_address(address: str, allowed: tuple[Network, ...] = ()) -> bool:
    """True unless the address is globally routable (is_global) or inside an
    explicitly allowed network. 100.64.0.0/10 (shared space: 100.100.100.200 is
    a cloud metadata address), private, loopback, link-local, 6to4 ... are refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed if network.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SIX_TO_FOUR:
            return True
        if ip in _NAT64:
            return _forbidden_address(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)), allowed)
    return not ip.is_global or ip.is_multicast


Resolver = Callable[[str], Awaitable[list[str]]]


async def _system_resolve(host: str) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchFailed(f"cannot resolve {host}: {exc}") from None
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class PinnedRequest:
    """A request bound to the address the guard checked: the URL names that
    address, Host and TLS SNI (and so certificate checking) the original host."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, Any]


class UrlGuard:
    """Allows a URL only if its host matches a pattern and resolves to public addresses.

    `pin` resolves once, checks every address, and binds the request to a
    checked one, so a resolver answering differently at connect time (DNS
    rebinding) cannot send the request elsewhere.
    """

    def __init__(
        self,
        patterns: tuple[str, ...],
        private_networks: tuple[str, ...] = (),
        resolve: Resolver = _system_resolve,
    ) -> None:
        self.patterns = tuple(p.lower() for p in patterns)
        self.private_networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in private_networks
        )
        self._resolve = resolve

    def _host(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchNotAllowed(f"not an http(s) URL: {url}", field="url")
        if parts.username or parts.password:
            raise FetchNotAllowed("URLs with credentials are refused", field="url")
        host = parts.hostname.lower()
        if not any(fnmatch.fnmatchcase(host, p) for p in self.patterns):
            raise FetchNotAllowed(f"host {host} is not in the allowed fetch hosts", field="url")
        return host

    def _check_addresses(self, host: str, addresses: list[str]) -> None:
        bad = [a for a in addresses if _forbidden_address(a, self.private_networks)]
        if bad or not addresses:
            raise FetchNotAllowed(
                f"host {host} resolves to {', '.join(bad) or 'no address'}, which is not "
                "globally routable (FETCH_ALLOW_PRIVATE_NETWORKS can allow a network)",
                field="url",
            )

    async def check(self, url: str) -> str:
        """The address to connect to, once `url` passed every check."""
        host = self._host(url)
        addresses = await self._resolve(host)
        self._check_addresses(host, addresses)
        return addresses[0].split("%", 1)[0]

    async def pin(self, url: str) -> PinnedRequest:
        address = await self.check(url)
        original = httpx.URL(url)
        host = original.host
        authority = host if original.port is None else f"{host}:{original.port}"
        return PinnedRequest(
            url=original.copy_with(host=address),
            headers={"host": authority},
            extensions={"sni_hostname": host} if original.scheme == "https" else {},
        )


def _decode_json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FetchRejected(f"{url} did not answer JSON") from None


class EvidenceFetcher:
    """Fetches Evidence for a task by app_config_type (async, httpx)."""

    def __init__(
        self,
        settings: VerificationSettings,
        client: httpx.AsyncClient | None = None,
        resolve: Resolver = _system_resolve,
    ) -> None:
        self.settings = settings
        self.guard = UrlGuard(
            settings.allowed_fetch_hosts, settings.fetch_allow_private_networks, resolve
        )
        # Redirects are not followed: a redirect could lead past the guard.
        self._client = client or httpx.AsyncClient(
            timeout=settings.fetch_timeout_seconds, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get_json(
        self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        pinned = await self.guard.pin(url)
        limit = self.settings.max_response_bytes
        try:
            async with self._client.stream(
                "GET",
                pinned.url,
                params=params,
                headers={**(headers or {}), **pinned.headers},
                extensions=pinned.extensions,
            ) as response:
                if response.status_code >= 500:
                    raise FetchFailed(f"{url} answered {response.status_code}")
                if response.status_code >= 300:
                    raise FetchRejected(f"{url} answered {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise FetchRejected(f"{url} answered more than {limit} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None
        return _decode_json(b"".join(chunks), url)

    async def fetch(self, request: VerificationRequest) -> Evidence | ChainEvidence:
        if request.app_config_type == "phala_cloud":
            # The gateway's acme-info carries the quotes the domain checks bind keys with.
            want_acme = request.flags.dns_caa or request.flags.ct_log
            return await self.fetch_phala_cloud(
                request.app_id, request.model_or_domain, acme_info=want_acme
            )
        if request.app_config_type == "redpill":
            return await self.fetch_redpill(request.model_or_domain)
        raise FetchRejected(
            f"no evidence source for app_config_type {request.app_config_type!r}",
            field="app_config_type",
        )

    async def fetch_phala_cloud(
        self, app_id: str, domain: str = "", *, acme_info: bool = False
    ) -> ChainEvidence:
        """The app's whole chain: its instances, its KMS and its gateway; with
        `acme_info`, the gateway's /.dstack/acme-info on every part that runs
        the domain checks (the app's instances) and on the gateway."""
        if not PHALA_CLOUD_APP_ID.match(app_id):
            raise FetchNotAllowed("app_id must be hex", field="app_id")
        app_id = app_id.lower().removeprefix("0x")
        doc = await self._get_json(attestations_url(self.settings.phala_cloud_api_url, app_id))
        chain = parse_system_info(doc, app_id)
        if domain and chain.instances:
            # The app's own Info endpoint answers for one instance: its certificate
            # and VM shape go to that instance (by instance id, else the first).
            info = await self._app_info(app_id, domain)
            instance_id = str(info.pop("instance_id", ""))
            instances = list(chain.instances)
            target = next(
                (i for i, p in enumerate(instances) if p.part == instance_part(instance_id)), 0
            )
            part = instances[target]
            fields = {k: v for k, v in info.items() if getattr(part.evidence, k) is None}
            instances[target] = replace(part, evidence=replace(part.evidence, **fields))
            chain = replace(chain, instances=tuple(instances))
        if acme_info:
            chain = await self._with_acme_info(chain)
        return chain

    async def _with_acme_info(self, chain: ChainEvidence) -> ChainEvidence:
        """Attach the gateway's acme-info (kms_info.gateway_app_url + /.dstack/acme-info)."""
        base = str(chain.kms_info.get("gateway_app_url") or "").rstrip("/")
        if not base.startswith("https://") and not base.startswith("http://"):
            # Without it the domain checks say there is no attested account or key.
            return chain
        doc = await self._get_json(f"{base}/.dstack/acme-info")
        if not isinstance(doc, dict):
            raise FetchRejected(f"{base}/.dstack/acme-info did not answer an object")
        text = json.dumps(doc, separators=(",", ":"))

        def attach(part: PartEvidence) -> PartEvidence:
            return replace(part, evidence=replace(part.evidence, acme_info=text))

        return replace(
            chain,
            instances=tuple(attach(p) for p in chain.instances),
            gateway=attach(chain.gateway) if chain.gateway else None,
        )

    async def _app_info(self, app_id: str, domain: str) -> dict[str, Any]:
        domain = domain.lower().rstrip(".")
        if not _DOMAIN.match(domain):
            raise FetchNotAllowed(f"not a domain name: {domain!r}", field="model_or_domain")
        url = self.settings.phala_app_info_url_template.format(app_id=app_id, domain=domain)
        info = await self._get_json(url)
        if not isinstance(info, dict):
            raise FetchRejected(f"{url} did not answer an object")
        out: dict[str, Any] = {}
        tcb_info = maybe_json(info.get("tcb_info"))
        if isinstance(tcb_info, dict) and isinstance(tcb_info.get("app_compose"), str):
            out["app_compose"] = tcb_info["app_compose"]
        vm_config = info.get("vm_config")
        if vm_config:
            out["vm_config"] = vm_config if isinstance(vm_config, str) else json.dumps(vm_config)
        if isinstance(info.get("app_cert"), str) and info["app_cert"]:
            out["certificate_chain"] = info["app_cert"]
        if isinstance(info.get("instance_id"), str):
            out["instance_id"] = info["instance_id"]
        return out

    async def fetch_redpill(self, model: str) -> Evidence:
        if not REDPILL_MODEL.match(model):
            raise FetchNotAllowed(f"not a model name: {model!r}", field="model_or_domain")
        base = self.settings.redpill_api_url.rstrip("/")
        headers = {"accept": "application/json"}
        if self.settings.redpill_api_key:
            headers["authorization"] = f"Bearer {self.settings.redpill_api_key}"
        doc = await self._get_json(f"{base}/v1/attestation/report", {"model": model}, headers)
        if not isinstance(doc, dict) or not isinstance(doc.get("intel_quote"), str):
            raise FetchRejected("redpill attestation report has no intel_quote")
        info = maybe_json(doc.get("info")) or {}
        evidence: dict[str, Any] = {"quote": doc["intel_quote"], "event_log": doc.get("event_log")}
        if isinstance(info, dict):
            tcb_info = maybe_json(info.get("tcb_info"))
            if isinstance(tcb_info, dict) and isinstance(tcb_info.get("app_compose"), str):
                evidence["app_compose"] = tcb_info["app_compose"]
            if info.get("vm_config"):
                vm = info["vm_config"]
                evidence["vm_config"] = vm if isinstance(vm, str) else json.dumps(vm)
            if isinstance(info.get("app_cert"), str) and info["app_cert"]:
                evidence["certificate_chain"] = info["app_cert"]
        return evidence_from_dict(evidence)


class HttpWebFetcher:
    """WebFetcher (checks/domain.py) for operator-configured DoH and CT endpoints."""

    def __init__(self, timeout: float, max_bytes: int, client: httpx.Client | None = None) -> None:
        self.max_bytes = max_bytes
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def get_bytes(
        self, url: str, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> bytes:
        response = self._client.get(url, params=params, headers=headers)
        response.raise_for_status()
        if len(response.content) > self.max_bytes:
            raise FetchRejected(f"{url} answered more than {self.max_bytes} bytes")
        return response.content

    def get_json(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Any:
        return _decode_json(self.get_bytes(url, params, headers), url)
