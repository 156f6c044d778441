"""On-chain compose-hash governance through Ethereum JSON-RPC eth_call."""

from __future__ import annotations

import re

import httpx

# First 4 bytes of keccak256("allowedComposeHashes(bytes32)"), the DstackApp
# contract's public mapping getter (Dstack-TEE/dstack, kms/auth-eth).
ALLOWED_COMPOSE_HASHES_SELECTOR = "2f6622e5"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class EthRpcComposeRegistry:
    """ComposeHashRegistry backed by a JSON-RPC endpoint (sync: runs in pool workers)."""

    def __init__(
        self, rpc_url: str, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self.rpc_url = rpc_url
        self._client = client or httpx.Client(timeout=timeout)

    def is_allowed(self, contract_address: str, compose_hash: bytes) -> bool:
        if not _ADDRESS.match(contract_address):
            raise ValueError(f"not an Ethereum address: {contract_address!r}")
        if len(compose_hash) != 32:
            raise ValueError("compose hash must be 32 bytes")
        payload = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [
                {
                    "to": contract_address,
                    "data": "0x" + ALLOWED_COMPOSE_HASHES_SELECTOR + compose_hash.hex(),
                },
                "latest",
            ],
        }
        response = self._client.post(self.rpc_url, json=payload)
        response.raise_for_status()
        body = response.json()
        if "error" in body:
            raise RuntimeError(f"eth_call error: {body['error']}")
        result = body.get("result")
        if not isinstance(result, str) or not result.startswith("0x"):
            raise RuntimeError("eth_call returned no result")
        return int(result, 16) != 0 if len(result) > 2 else False
