"""`verify --phala-cloud-response FILE`: a saved attestations response verified
offline exactly as a fetched one, with collateral picked by FMSPC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.verification.cli import main

from .phala_recorded import SyntheticChain, new_spki, passing_chain, vector_system_info
from .support import APP_ID, COMPOSE_HASH, DCAP, DSTACK

AT = "2026-03-05T10:50:03Z"
EVIDENCE = str(DSTACK / "quote-report.json")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _saved(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "attestations.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_saved_response_is_verified_part_by_part(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = _cli(
        capsys,
        *("--phala-cloud-response", _saved(tmp_path, vector_system_info())),
        *("--collateral", str(DCAP), "--at", AT, "--flags", "hardware,source_code"),
        *("--compose-hash", COMPOSE_HASH, "--kms-ca-pubkey", new_spki().hex()),
    )
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "failed"
    hardware = {r["part"]: r["status"] for r in report["part_checks"] if r["name"] == "hardware"}
    assert hardware == dict.fromkeys(
        ["kms", "app/instance:i-1", "app/instance:i-2", "gateway"], "passed"
    )
    assert report["chain"]["app_id"] == APP_ID  # from the response, none given
    assert "names 'local-sgx', not the KMS" in report["checks"][2]["reason"]


def test_the_same_chain_passes_once_its_kms_key_is_pinned_on_the_command_line(
    tmp_path: Path,
) -> None:
    # The CLI builds the request the engine verifies; with parts whose logs we
    # wrote (SyntheticChain stands in for dcap-qvl) --kms-ca-pubkey is what
    # lets the app-to-KMS link through.
    from services.verification.cli import build_parser

    chain, key = SyntheticChain(), new_spki()
    path = _saved(tmp_path, passing_chain(chain, key, bind_key=False))
    args = build_parser().parse_args(
        ["verify", "--phala-cloud-response", path, "--at", AT, "--flags", "hardware,source_code"]
    )
    from services.verification import cli

    for pins, verdict in (([], "failed"), ([key.hex()], "passed")):
        args.kms_ca_pubkey = pins
        request = cli.build_request(args)
        assert chain.engine().verify(request).verdict == verdict


def test_several_collateral_files_each_quote_gets_its_fmspc(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(
        capsys,
        *("--evidence", EVIDENCE, "--at", AT, "--flags", "hardware"),
        *("--collateral", str(DCAP / "tdx_quote.collateral.json")),
        *("--collateral", str(DCAP / "collateral_fmspc_90C06F.json")),
    )
    assert code == 0, out
    assert json.loads(out)["checks"][0]["details"]["collateral_fmspc"] == "90C06F000000"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"instances": "none"}, "instances: expected a list of instances"),
        ({"instances": [{"quote": 1}]}, "instances[0].quote"),
    ],
)
def test_a_malformed_response_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: object, message: str
) -> None:
    code, out, err = _cli(capsys, "--phala-cloud-response", _saved(tmp_path, doc), "--at", AT)
    assert code == 2 and out == ""
    assert message in err


def test_evidence_and_a_response_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["verify", "--evidence", EVIDENCE, "--phala-cloud-response", EVIDENCE])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
