"""Strict parser of SGX / TDX DCAP quotes (v3, v4, v5).

dcap-qvl parses too, but its errors are terse and it cannot tell us where the
signed data ends. We need that offset to hash a quote without its unsigned
trailing padding, and we want a truncated quote to be named as such. The values
parsed here are *unverified*: checks take register values from the verified
report returned by dcap-qvl (see checks/hardware.py), never from this parser.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from .errors import EvidenceMalformed

HEADER_LEN = 48
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081

# TD report 1.0 layout (Intel TDX DCAP quote library, sgx_quote_4.h), in order.
_TD10_FIELDS: tuple[tuple[str, int], ...] = (
    ("tee_tcb_svn", 16),
    ("mr_seam", 48),
    ("mr_signer_seam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mr_td", 48),
    ("mr_config_id", 48),
    ("mr_owner", 48),
    ("mr_owner_config", 48),
    ("rt_mr0", 48),
    ("rt_mr1", 48),
    ("rt_mr2", 48),
    ("rt_mr3", 48),
    ("report_data", 64),
)
_TD15_EXTRA: tuple[tuple[str, int], ...] = (("tee_tcb_svn2", 16), ("mr_service_td", 48))
# SGX enclave report body (sgx_report.h); reserved gaps keep their names so the
# offsets are self-checking.
_SGX_FIELDS: tuple[tuple[str, int], ...] = (
    ("cpu_svn", 16),
    ("misc_select", 4),
    ("_reserved1", 28),
    ("attributes", 16),
    ("mr_enclave", 32),
    ("_reserved2", 32),
    ("mr_signer", 32),
    ("_reserved3", 96),
    ("isv_prod_id", 2),
    ("isv_svn", 2),
    ("_reserved4", 60),
    ("report_data", 64),
)
TD10_LEN = sum(n for _, n in _TD10_FIELDS)  # 584
TD15_LEN = TD10_LEN + sum(n for _, n in _TD15_EXTRA)  # 648
SGX_REPORT_LEN = sum(n for _, n in _SGX_FIELDS)  # 384


@dataclass(frozen=True)
class ParsedQuote:
    """Structural view of a quote: header values, body fields (hex), signed length."""

    version: int
    tee_type: int
    attestation_key_type: int
    body_type: str  # "TD10", "TD15" or "SGX"
    fields: dict[str, str] = field(default_factory=dict)
    signed_length: int = 0
    total_length: int = 0

    @property
    def is_tdx(self) -> bool:
        return self.tee_type == TEE_TDX


def _need(raw: bytes, end: int, what: str) -> None:
    if len(raw) < end:
        raise EvidenceMalformed(
            "quote", f"truncated: {what} needs {end} bytes, the quote has {len(raw)}"
        )


def _split(body: bytes, layout: tuple[tuple[str, int], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    offset = 0
    for name, size in layout:
        if not name.startswith("_"):
            out[name] = body[offset : offset + size].hex()
        offset += size
    return out


def parse_quote(raw: bytes) -> ParsedQuote:
    """Parse `raw` or raise EvidenceMalformed(field="quote") saying what is wrong."""
    _need(raw, HEADER_LEN, "the header")
    version, key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    offset = HEADER_LEN
    if version in (3, 4):
        if tee_type == TEE_TDX:
            body_type, body_len, layout = "TD10", TD10_LEN, _TD10_FIELDS
        elif tee_type == TEE_SGX:
            body_type, body_len, layout = "SGX", SGX_REPORT_LEN, _SGX_FIELDS
        else:
            raise EvidenceMalformed("quote", f"unknown TEE type 0x{tee_type:08x}")
    elif version == 5:
        _need(raw, offset + 6, "the v5 body descriptor")
        v5_type, body_len = struct.unpack_from("<HI", raw, offset)
        offset += 6
        if v5_type == 1:
            body_type, layout = "SGX", _SGX_FIELDS
        elif v5_type == 2:
            body_type, layout = "TD10", _TD10_FIELDS
        elif v5_type == 3:
            body_type, layout = "TD15", _TD10_FIELDS + _TD15_EXTRA
        else:
            raise EvidenceMalformed("quote", f"unsupported v5 body type {v5_type}")
        if body_len != sum(n for _, n in layout):
            raise EvidenceMalformed(
                "quote", f"v5 body size {body_len} does not match body type {v5_type}"
            )
    else:
        raise EvidenceMalformed("quote", f"unsupported quote version {version}")
    _need(raw, offset + body_len + 4, "the report body and signature length")
    body = raw[offset : offset + body_len]
    offset += body_len
    (sig_len,) = struct.unpack_from("<I", raw, offset)
    offset += 4
    _need(raw, offset + sig_len, f"the signature data ({sig_len} bytes)")
    return ParsedQuote(
        version=version,
        tee_type=tee_type,
        attestation_key_type=key_type,
        body_type=body_type,
        fields=_split(body, layout),
        signed_length=offset + sig_len,
        total_length=len(raw),
    )


def signed_quote_digest(raw: bytes, parsed: ParsedQuote) -> str:
    """sha256 of the quote up to the end of its signature data.

    Trailing bytes after the signature data are not signed; hashing them would
    let two byte strings of the same quote yield different digests.
    """
    return hashlib.sha256(raw[: parsed.signed_length]).hexdigest()
