"""On-chain compose-hash lookups against a real local JSON-RPC server (recorded answers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.verification.onchain import EthRpcComposeRegistry

from .recorded_http import Answer, recorded_server
from .support import AT_90C06F, COMPOSE_HASH

CONTRACT = "0x" + "ab" * 20
AT = int(AT_90C06F.timestamp())
# A chain of 1,000 blocks, one every 12 s, the last one 100 blocks after AT.
FIRST_TS = AT - 900 * 12 - 5


def _chain(result: str, archive: bool = True) -> Any:
    def answer(body: bytes) -> Answer:
        call = json.loads(body)
        method, params = call["method"], call["params"]
        if method == "eth_getBlockByNumber":
            number = 999 if params[0] == "latest" else int(params[0], 16)
            block = {"number": hex(number), "timestamp": hex(FIRST_TS + 12 * number)}
            return 200, {"jsonrpc": "2.0", "id": 1, "result": block}
        if method == "eth_call" and (archive or params[1] == "latest"):
            return 200, {"jsonrpc": "2.0", "id": 1, "result": result}
        return 200, {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32000, "message": "missing trie node"},
        }

    return answer


@pytest.mark.parametrize(
    ("result", "allowed"), [("0x" + "00" * 31 + "01", True), ("0x" + "00" * 32, False)]
)
def test_lookup_is_made_at_the_block_of_the_evaluation_time(result: str, allowed: bool) -> None:
    with recorded_server({"/rpc": _chain(result)}) as (base, log):
        registry = EthRpcComposeRegistry(base + "/rpc", timeout=5)
        assert registry.is_allowed(CONTRACT, bytes.fromhex(COMPOSE_HASH), AT_90C06F) is allowed
    calls = [json.loads(entry["body"]) for entry in log]
    eth_call = [c for c in calls if c["method"] == "eth_call"]
    assert eth_call[0]["params"][0] == {"to": CONTRACT, "data": "0x2f6622e5" + COMPOSE_HASH}
    # The last block not after AT: FIRST_TS + 12 * n <= AT  ->  n = 900.
    assert eth_call[0]["params"][1] == hex(900)
    assert registry.last_block == hex(900)


def test_a_node_without_history_is_asked_at_the_latest_block() -> None:
    with recorded_server({"/rpc": _chain("0x" + "00" * 31 + "01", archive=False)}) as (base, _):
        registry = EthRpcComposeRegistry(base + "/rpc", timeout=5)
        assert registry.is_allowed(CONTRACT, bytes.fromhex(COMPOSE_HASH), AT_90C06F) is True
    assert registry.last_block == "latest"


def test_a_bad_contract_address_is_refused_before_any_call() -> None:
    registry = EthRpcComposeRegistry("http://127.0.0.1:9/rpc", timeout=1)
    with pytest.raises(ValueError, match="not an Ethereum address"):
        registry.is_allowed("0x123", bytes(32), AT_90C06F)
