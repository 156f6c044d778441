"""The real dstack RA-TLS chain the tests can use, and how to get it.

Phala-Network/trust-center publishes, in its web app's debug data, the app
certificate of a redpill app (app-id 78601222ada762fa7cdcbc167aa66dd7a5f57ece):
demo-cert <- Dstack App CA <- Dstack KMS CA, the leaf carrying a TDX quote
(FMSPC 90C06F) and its event log. (Its other such chain's quote is FMSPC
20A06F, for which no collateral is at hand.) trust-center has no licence (its
README defers to app directories that have none), so the chain is not vendored
here; extract it from a checkout and point REAL_RATLS_CHAIN at it:

    .venv/bin/python -m tests.unit.verification.real_ratls \\
        TRUST_CENTER/apps/webapp/src/data/debug-data.ts > /tmp/ratls-app-chain.pem
    REAL_RATLS_CHAIN=/tmp/ratls-app-chain.pem .venv/bin/pytest -q tests/unit/verification
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

SOURCE = (
    "github.com/Phala-Network/trust-center apps/webapp/src/data/debug-data.ts "
    "(blob f9cd6b78, the same from fa0ae845 to f081105d)"
)
APP_ID = "78601222ada762fa7cdcbc167aa66dd7a5f57ece"
# The PEM text the test's expectations were checked against.
SHA256 = "8e5393459a79779353a68132102d72e846e52cba7445df0cfe77126f144b85b5"

_APP_CERT = re.compile(r"app_cert:\s*'((?:[^'\\]|\\.)*)'")


def extract(debug_data: str) -> str:
    """The app_cert of the entry with app_id APP_ID; raises ValueError."""
    start = debug_data.find(f"app_id: '{APP_ID}'")
    found = _APP_CERT.search(debug_data, start) if start >= 0 else None
    if found is None:
        raise ValueError(f"no app_cert after app_id {APP_ID} (is it {SOURCE}?)")
    # A TypeScript string literal: its escapes are \n and \' only.
    pem = found.group(1).encode("ascii").decode("unicode_escape")
    digest = hashlib.sha256(pem.encode("ascii")).hexdigest()
    if digest != SHA256:
        raise ValueError(f"the chain's sha256 is {digest}, not the pinned {SHA256}")
    return pem


if __name__ == "__main__":
    sys.stdout.write(extract(Path(sys.argv[1]).read_text()))
