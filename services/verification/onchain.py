"""On-chain compose-hash governance through Ethereum JSON-RPC eth_call.

The lookup is made as of the evaluation time: at the last block whose
timestamp is not after it (found by bisection over eth_getBlockByNumber).
A node that cannot serve that block's state (not an archive node) is asked
at the latest block instead, and `last_block` says which was used.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any

import httpx

# First 4 bytes of keccak256("allowedComposeHashes(bytes32)"), the DstackApp
# contract's public mapping getter (Dstack-TEE/dstack, kms/auth-eth).
ALLOWED_COMPOSE_HASHES_SELECTOR = "2f6622e5"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MAX_BISECTION_STEPS = 64


class EthRpcComposeRegistry:
    """ComposeHashRegistry backed by a JSON-RPC endpoint (sync: runs in pool workers)."""

    def __init__(
        self, rpc_url: str, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self.rpc_url = rpc_url
        self._client = client or httpx.Client(timeout=timeout)
        self.last_block = ""
        self._block_at = lru_cache(maxsize=64)(self._find_block_at)

    def _call(self, method: str, params: list[Any]) -> Any:
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        response = self._client.post(self.rpc_url, json=payload)
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise RuntimeError(f"{method}: the RPC answered no JSON object")
        if "error" in body:
            raise RuntimeError(f"{method} error: {body['error']}")
        return body.get("result")

    def _block(self, tag: str) -> tuple[int, int]:
        block = self._call("eth_getBlockByNumber", [tag, False])
        if not isinstance(block, dict):
            raise RuntimeError(f"eth_getBlockByNumber({tag}) returned no block")
        return int(block["number"], 16), int(block["timestamp"], 16)

    def _find_block_at(self, timestamp: int) -> str:
        """The tag of the last block not after `timestamp` ("latest" if that is the newest)."""
        latest, latest_ts = self._block("latest")
        if latest_ts <= timestamp:
            return hex(latest)
        low, high = 0, latest  # invariant: block `high` is after `timestamp`
        _, low_ts = self._block(hex(low))
        if low_ts > timestamp:
            raise RuntimeError("the evaluation time is before the chain's first block")
        for _ in range(_MAX_BISECTION_STEPS):
            if high - low <= 1:
                return hex(low)
            middle = (low + high) // 2
            _, middle_ts = self._block(hex(middle))
            if middle_ts <= timestamp:
                low = middle
            else:
                high = middle
        return hex(low)

    def is_allowed(self, contract_address: str, compose_hash: bytes, at: datetime) -> bool:
        if not _ADDRESS.match(contract_address):
            raise ValueError(f"not an Ethereum address: {contract_address!r}")
        if len(compose_hash) != 32:
            raise ValueError("compose hash must be 32 bytes")
        call = {
            "to": contract_address,
            "data": "0x" + ALLOWED_COMPOSE_HASHES_SELECTOR + compose_hash.hex(),
        }
        block = self._block_at(int(at.timestamp()))
        try:
            result = self._call("eth_call", [call, block])
        except RuntimeError:
            # Not an archive node: the chain does not allow a historical lookup here.
            block = "latest"
            result = self._call("eth_call", [call, block])
        self.last_block = block
        if not isinstance(result, str) or not result.startswith("0x"):
            raise RuntimeError("eth_call returned no result")
        return int(result, 16) != 0 if len(result) > 2 else False
