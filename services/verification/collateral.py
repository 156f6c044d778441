"""Intel collateral: parsing its validity window, and finding it for a quote.

Sources, in order: the collateral inline in the evidence (handled by the
engine), a local directory of bundles, a cache of earlier fetches, and a PCCS.
Collateral whose window does not contain the evaluation time is refused, so a
past moment can be re-verified with the collateral of that moment and a stale
bundle is never silently used for "now".
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import dcap_qvl
from cryptography import x509

from .errors import CollateralExpired, CollateralUnavailable, EvidenceMalformed

_FIELDS = ("tcb_info", "qe_identity", "pck_crl", "root_ca_crl")


@dataclass(frozen=True)
class CollateralBundle:
    """Collateral JSON (dcap-qvl QuoteCollateralV3 shape) plus what we index it by."""

    json_text: str
    tee: str  # "TDX" or "SGX", from tcb_info.id
    fmspc: str  # upper-case hex, from tcb_info.fmspc
    ca: str  # "platform" or "processor", from the PCK CRL issuer
    not_before: datetime
    not_after: datetime

    def covers(self, at: datetime) -> bool:
        return self.not_before <= at <= self.not_after

    @property
    def window(self) -> str:
        return _window(self.not_before, self.not_after)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=64)
def _window(not_before: datetime, not_after: datetime) -> str:
    # Cached: every report names the window, and formatting dates is not free.
    return f"{_iso(not_before)} .. {_iso(not_after)}"


def _parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise EvidenceMalformed("collateral", f"{where} is missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceMalformed("collateral", f"{where} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_collateral(text: str) -> CollateralBundle:
    """Read the validity window and index keys out of collateral JSON.

    The window is the intersection of every dated part: TCB info and QE
    identity (issueDate .. nextUpdate) and both CRLs (thisUpdate .. nextUpdate),
    which is exactly the span in which dcap-qvl accepts the bundle.
    """
    try:
        outer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvidenceMalformed("collateral", f"not valid JSON ({exc})") from None
    if not isinstance(outer, dict) or any(k not in outer for k in _FIELDS):
        raise EvidenceMalformed("collateral", f"expected an object with {', '.join(_FIELDS)}")
    starts: list[datetime] = []
    ends: list[datetime] = []
    try:
        tcb_info = json.loads(outer["tcb_info"])
        qe_identity = json.loads(outer["qe_identity"])
    except (TypeError, json.JSONDecodeError):
        raise EvidenceMalformed("collateral", "tcb_info / qe_identity are not JSON text") from None
    for name, doc in (("tcb_info", tcb_info), ("qe_identity", qe_identity)):
        if not isinstance(doc, dict):
            raise EvidenceMalformed("collateral", f"{name} is not a JSON object")
        starts.append(_parse_time(doc.get("issueDate"), f"{name}.issueDate"))
        ends.append(_parse_time(doc.get("nextUpdate"), f"{name}.nextUpdate"))
    ca = ""
    for name in ("pck_crl", "root_ca_crl"):
        try:
            crl = x509.load_der_x509_crl(bytes.fromhex(outer[name]))
        except (TypeError, ValueError):
            raise EvidenceMalformed("collateral", f"{name} is not a hex DER CRL") from None
        starts.append(crl.last_update_utc)
        if crl.next_update_utc is not None:
            ends.append(crl.next_update_utc)
        if name == "pck_crl":
            issuer = crl.issuer.rfc4514_string().lower()
            ca = "processor" if "processor" in issuer else "platform"
    fmspc = str(tcb_info.get("fmspc", "")).upper()
    tee = str(tcb_info.get("id", "SGX")).upper()
    return CollateralBundle(
        json_text=text,
        tee="TDX" if tee == "TDX" else "SGX",
        fmspc=fmspc,
        ca=ca,
        not_before=max(starts),
        not_after=min(ends),
    )


@dataclass(frozen=True)
class QuoteCollateralKey:
    """What a quote needs collateral for."""

    tee: str
    fmspc: str
    ca: str

    @classmethod
    def of_quote(cls, quote: bytes) -> QuoteCollateralKey:
        try:
            parsed = dcap_qvl.parse_quote(quote)
            return cls(
                tee="TDX" if parsed.is_tdx() else "SGX",
                fmspc=parsed.fmspc().upper(),
                ca=parsed.ca().lower(),
            )
        except ValueError as exc:
            raise EvidenceMalformed("quote", f"cannot read FMSPC / CA: {exc}") from None

    def matches(self, bundle: CollateralBundle) -> bool:
        return (bundle.tee, bundle.fmspc, bundle.ca) == (self.tee, self.fmspc, self.ca)

    @property
    def slug(self) -> str:
        return f"{self.tee.lower()}-{self.fmspc.lower()}-{self.ca}"


class CollateralCache(abc.ABC):
    """Key/value store of fetched collateral. Small on purpose: an S3 one is a few lines."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: str, value: bytes) -> None: ...


_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class LocalCollateralCache(CollateralCache):
    """A folder; keys map to relative paths (validated, no traversal)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"unsafe cache key {key!r}")
        return self.root / key

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(value)
        tmp.replace(path)  # atomic: a reader never sees half a bundle


class PccsClient(Protocol):
    """Fetches collateral JSON for a quote from a PCCS (network, async)."""

    async def fetch(self, quote: bytes) -> str: ...


class DcapPccsClient:
    """PCCS access through dcap_qvl.get_collateral."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, quote: bytes) -> str:
        try:
            collateral = await dcap_qvl.get_collateral(self.url, quote)
        except (ValueError, RuntimeError) as exc:
            raise CollateralUnavailable(f"PCCS fetch failed: {exc}") from None
        return collateral.to_json()


class CollateralStore:
    """Finds collateral for a quote valid at an evaluation time."""

    def __init__(
        self,
        local_dir: Path | None = None,
        cache: CollateralCache | None = None,
        pccs: PccsClient | None = None,
        files: tuple[Path, ...] = (),
    ) -> None:
        self.local_dir = local_dir
        # Single bundles beside the folder (the CLI's --collateral FILE).
        self.files = files
        self.cache = cache
        self.pccs = pccs
        # Parsed bundles of the local directory, keyed by (path, mtime_ns):
        # re-parsing CRLs on every verification would dominate the cost.
        self._local_index: dict[tuple[Path, int], CollateralBundle | None] = {}

    def _local_bundles(self) -> Iterator[CollateralBundle]:
        paths = list(self.files)
        if self.local_dir is not None and self.local_dir.is_dir():
            paths += sorted(self.local_dir.glob("*.json"))
        for path in paths:
            key = (path, path.stat().st_mtime_ns)
            if key not in self._local_index:
                try:
                    self._local_index[key] = parse_collateral(path.read_text("utf-8"))
                except (EvidenceMalformed, UnicodeDecodeError):
                    self._local_index[key] = None  # not a bundle; ignore it
            bundle = self._local_index[key]
            if bundle is not None:
                yield bundle

    def _index_key(self, key: QuoteCollateralKey) -> str:
        return f"collateral/{key.slug}/index.json"

    def _cached_bundles(self, key: QuoteCollateralKey) -> Iterator[CollateralBundle]:
        if self.cache is None:
            return
        index = self.cache.get(self._index_key(key))
        for item_key in json.loads(index) if index else []:
            body = self.cache.get(item_key)
            if body is not None:
                yield parse_collateral(body.decode("utf-8"))

    def find(self, key: QuoteCollateralKey, at: datetime) -> CollateralBundle | None:
        """Local directory, then cache. Raises CollateralExpired when only bundles
        for other times exist, so the caller can say why."""
        seen: list[CollateralBundle] = []
        for source in (self._local_bundles(), self._cached_bundles(key)):
            matching = [b for b in source if key.matches(b)]
            valid = [b for b in matching if b.covers(at)]
            if valid:
                return max(valid, key=lambda b: b.not_before)
            seen.extend(matching)
        if seen:
            windows = ", ".join(sorted({b.window for b in seen}))
            raise CollateralExpired(
                f"collateral for FMSPC {key.fmspc} ({key.ca}) is valid {windows}, not at {_iso(at)}"
            )
        return None

    def remember(self, key: QuoteCollateralKey, bundle: CollateralBundle) -> None:
        """Put a fetched bundle into the cache, indexed with its window."""
        if self.cache is None:
            return
        item_key = f"collateral/{key.slug}/{bundle.not_before.strftime('%Y%m%dT%H%M%SZ')}.json"
        self.cache.put(item_key, bundle.json_text.encode("utf-8"))
        raw_index = self.cache.get(self._index_key(key))
        index: list[str] = json.loads(raw_index) if raw_index else []
        if item_key not in index:
            index.append(item_key)
            self.cache.put(self._index_key(key), json.dumps(sorted(index)).encode("utf-8"))

    async def resolve(self, quote: bytes, at: datetime) -> CollateralBundle:
        """find(), then the PCCS; a fetched bundle is cached with its window."""
        key = QuoteCollateralKey.of_quote(quote)
        expired: CollateralExpired | None = None
        try:
            found = self.find(key, at)
        except CollateralExpired as exc:
            found, expired = None, exc
        if found is not None:
            return found
        if self.pccs is None:
            if expired is not None:
                raise expired
            raise CollateralUnavailable(
                f"no collateral for FMSPC {key.fmspc} ({key.ca}) and no PCCS configured"
            )
        bundle = parse_collateral(await self.pccs.fetch(quote))
        self.remember(key, bundle)
        if not bundle.covers(at):
            raise CollateralExpired(
                f"PCCS collateral for FMSPC {key.fmspc} is valid {bundle.window}, not at {_iso(at)}"
            )
        return bundle
