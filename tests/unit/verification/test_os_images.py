"""OS reference values and the os check.

Real data: the quote-report.json vector (a dstack guest's quote, verified by
dcap-qvl) against the shipped entry that was observed from it. Synthetic:
entries we change (another shape, other registers, a dev image), standing in
for the images and shapes no public vector covers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from services.verification.engine import VerificationEngine
from services.verification.errors import EvidenceMalformed
from services.verification.model import CheckStatus, VerificationFlags
from services.verification.os_image_store import (
    LocalOsImageStore,
    OsImageCatalog,
    OsImageExists,
    OsImageFileError,
    OsImageNotFound,
    load_entry_files,
)
from services.verification.os_images import (
    Measurement,
    OsImageEntry,
    entry_from_dict,
    entry_from_dstack_mr,
    merge,
)
from services.verification.os_images_cli import dstack_mr_arguments
from services.verification.os_images_cli import main as os_images_main
from services.verification.settings import DEFAULT_OS_ALLOWLIST

from .support import (
    AT_90C06F,
    DCAP,
    DSTACK,
    event_log_with,
    quote_report_evidence,
    quote_report_request,
)

VECTOR_HASH = "14ad42d0270b444eaeb53918a5a94d9b17eec7a817cd336173b17c5327541c67"
OS_ONLY = VerificationFlags.only(["hardware", "os"])


def shipped() -> OsImageEntry:
    (entry,) = load_entry_files([DEFAULT_OS_ALLOWLIST])
    return entry


def engine_with(*entries: OsImageEntry, allow_dev: bool = False) -> VerificationEngine:
    engine = VerificationEngine(os_catalog=OsImageCatalog(entries))
    if allow_dev:
        from services.verification.settings import VerificationSettings

        engine = VerificationEngine(
            VerificationSettings(allow_dev_os_images=True), os_catalog=OsImageCatalog(entries)
        )
    return engine


def os_result(engine: VerificationEngine, **changes: object):  # type: ignore[no-untyped-def]
    return engine.verify(quote_report_request(flags=OS_ONLY, **changes)).check("os")


def test_shipped_entry_is_observed_and_names_its_evidence() -> None:
    entry = shipped()
    assert entry.source == "observed"
    assert "quote-report.json" in entry.source_detail
    assert entry.os_image_hash == VECTOR_HASH


def test_real_dstack_quote_passes_os_against_its_observed_entry() -> None:
    result = os_result(engine_with(shipped()))
    assert result.status is CheckStatus.PASSED, result.reason
    assert result.details["os_image_hash"] == VECTOR_HASH
    # dstack of this vintage does not measure os-image-hash into RTMR3.
    assert result.details["os_image_hash_source"].startswith("vm_config")


def test_unknown_os_image_fails_naming_the_hash() -> None:
    result = os_result(engine_with())
    assert result.status is CheckStatus.FAILED
    assert result.reason == f"unknown OS image {VECTOR_HASH}"


def test_other_vm_shape_fails_no_measurement() -> None:
    entry = shipped()
    (m,) = entry.measurements
    other = replace(entry, measurements=(replace(m, vm_shape=m.vm_shape | {"cpu_count": 8}),))
    result = os_result(engine_with(other))
    assert result.status is CheckStatus.FAILED
    assert result.reason == "no measurement for this VM shape"
    assert result.details["measured_shapes"][0]["cpu_count"] == 8


def test_register_that_differs_is_named() -> None:
    entry = shipped()
    (m,) = entry.measurements
    other = replace(entry, measurements=(replace(m, rtmr1="11" * 48),))
    result = os_result(engine_with(other))
    assert result.status is CheckStatus.FAILED
    assert result.reason.startswith("RTMR1 differ")
    assert result.details["expected"]["rtmr1"] == "11" * 48


def test_dev_image_fails_unless_policy_allows_it() -> None:
    dev = replace(shipped(), dev=True)
    result = os_result(engine_with(dev))
    assert result.status is CheckStatus.FAILED
    assert result.reason.startswith("dev image")
    assert os_result(engine_with(dev, allow_dev=True)).status is CheckStatus.PASSED


def test_vm_config_naming_another_image_than_the_entry_fails() -> None:
    # An attacker claiming a known image for other registers: the registers decide.
    vm = json.loads(quote_report_evidence().vm_config or "{}") | {"os_image_hash": "ab" * 32}
    other = replace(shipped(), os_image_hash="ab" * 32)
    (m,) = other.measurements
    other = replace(other, measurements=(replace(m, mrtd="22" * 48),))
    evidence = replace(quote_report_evidence(), vm_config=json.dumps(vm))
    result = os_result(engine_with(shipped(), other), evidence=evidence)
    assert result.status is CheckStatus.FAILED
    assert result.reason.startswith("MRTD differ")


def test_forged_event_log_cannot_name_the_image() -> None:
    # A payload changed without its digest: the log no longer replays, so it names nothing.
    evidence = replace(
        quote_report_evidence(), event_log=event_log_with({"event_payload": "00"}, "app-id")
    )
    result = os_result(engine_with(shipped()), evidence=evidence)
    assert result.status is CheckStatus.FAILED
    assert "digest does not match its payload" in result.reason


def test_failing_store_is_an_error_not_a_failure() -> None:
    class Broken(LocalOsImageStore):
        def get(self, os_image_hash: str) -> OsImageEntry | None:
            raise OSError("disk on fire")

    engine = VerificationEngine(os_catalog=OsImageCatalog((), Broken(Path("/nonexistent"))))
    result = os_result(engine)
    assert result.status is CheckStatus.ERROR
    assert "disk on fire" in result.reason


def test_entry_format_rejects_bad_fields_naming_them() -> None:
    good = shipped().to_dict()
    assert entry_from_dict(good) == shipped()
    with pytest.raises(EvidenceMalformed, match=r"measurements\[0\]\.rtmr2"):
        entry_from_dict(good | {"measurements": [good["measurements"][0] | {"rtmr2": "zz"}]})
    with pytest.raises(EvidenceMalformed, match="source"):
        entry_from_dict(good | {"source": "guessed"})
    with pytest.raises(EvidenceMalformed, match="two measurements for one VM shape"):
        entry_from_dict(good | {"measurements": good["measurements"] * 2})
    with pytest.raises(EvidenceMalformed, match=r"vm_shape\.cpu_count"):
        m = good["measurements"][0]
        entry_from_dict(good | {"measurements": [m | {"vm_shape": {"cpu_count": "16"}}]})


def test_dstack_mr_output_becomes_an_entry_for_the_given_shape() -> None:
    m = shipped().measurements[0]
    output = {"mrtd": m.mrtd, "rtmr0": m.rtmr0, "rtmr1": m.rtmr1, "rtmr2": m.rtmr2}
    vm_config = json.loads(quote_report_evidence().vm_config or "{}")
    entry = entry_from_dstack_mr(
        output, os_image_hash=VECTOR_HASH, version="dstack-x", vm_config=vm_config
    )
    assert entry.source == "dstack-mr"
    assert entry.measurements[0] == m
    assert os_result(engine_with(entry)).status is CheckStatus.PASSED


def test_dstack_mr_arguments_follow_the_vm_shape() -> None:
    vm_config = json.loads(quote_report_evidence().vm_config or "{}")
    args = dstack_mr_arguments(vm_config, Path("img/metadata.json"))
    assert args[:2] == ["measure", "--json"]
    assert args[args.index("--cpu") + 1] == "16"
    assert args[args.index("--memory") + 1] == "68719476736"
    assert args[args.index("--num-gpus") + 1] == "1"
    assert args[args.index("--two-pass-add-pages") + 1] == "true"
    assert args[-1] == "img/metadata.json"


def test_merge_adds_shapes_and_keeps_known_ones() -> None:
    entry = shipped()
    (m,) = entry.measurements
    other_shape = Measurement(m.vm_shape | {"cpu_count": 4}, "33" * 48, m.rtmr0, m.rtmr1, m.rtmr2)
    overwrite = replace(m, mrtd="44" * 48)
    merged = merge(entry, replace(entry, measurements=(other_shape, overwrite)))
    assert merged.measurements == (m, other_shape)


def test_legacy_allowlist_files_still_load(tmp_path: Path) -> None:
    legacy = {
        "images": [
            {
                "version": "old",
                "mrtd": "aa" * 48,
                "rtmr0": "bb" * 48,
                "rtmr1": "cc" * 48,
                "rtmr2": "dd" * 48,
                "vm_config": {"os_image_hash": "ee" * 32, "cpu_count": 2},
            }
        ]
    }
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(legacy))
    (entry,) = load_entry_files([path])
    assert entry.os_image_hash == "ee" * 32
    assert entry.measurements[0].vm_shape["cpu_count"] == 2
    path.write_text('{"images": [{"version": "x"}]}')
    with pytest.raises(OsImageFileError):
        load_entry_files([path])


def test_local_store_is_write_once_and_deletes(tmp_path: Path) -> None:
    store = LocalOsImageStore(tmp_path)
    entry = shipped()
    store.create(entry)
    with pytest.raises(OsImageExists):
        store.create(entry)
    assert store.get(VECTOR_HASH) == entry
    assert store.list() == [entry]
    store.delete(VECTOR_HASH)
    assert store.get(VECTOR_HASH) is None
    with pytest.raises(OsImageNotFound):
        store.delete(VECTOR_HASH)


def test_catalog_sees_new_entries_after_its_cache_time(tmp_path: Path) -> None:
    store = LocalOsImageStore(tmp_path)
    catalog = OsImageCatalog((), store, ttl=0.0)
    assert catalog.find(VECTOR_HASH) is None
    store.create(shipped())
    assert catalog.find(VECTOR_HASH) == shipped()
    cached = OsImageCatalog((), store, ttl=3600.0)
    assert cached.find(VECTOR_HASH) == shipped()
    store.delete(VECTOR_HASH)
    assert cached.find(VECTOR_HASH) == shipped()  # still cached
    cached.invalidate()
    assert cached.find(VECTOR_HASH) is None


def test_cli_add_from_evidence_records_an_observed_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    code = os_images_main(
        [
            "add",
            "--from-evidence",
            str(DSTACK / "quote-report.json"),
            "--collateral",
            str(DCAP / "collateral_fmspc_90C06F.json"),
            "--at",
            AT_90C06F.isoformat(),
            "--version",
            "dstack-observed",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["source"] == "observed"
    assert "quote-report.json" in printed["source_detail"]
    stored = LocalOsImageStore(tmp_path).get(VECTOR_HASH)
    assert stored is not None
    assert stored.measurements == shipped().measurements
    # An engine reading that store now passes the os check without the shipped entry.
    catalog = OsImageCatalog((), LocalOsImageStore(tmp_path), ttl=0)
    assert os_result(VerificationEngine(os_catalog=catalog)).status is CheckStatus.PASSED


def test_cli_add_refuses_evidence_that_does_not_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    code = os_images_main(
        [
            "add",
            "--from-evidence",
            str(DSTACK / "quote-report.json"),
            "--at",
            "2026-03-05T10:50:03Z",
        ]
    )
    assert code == 2
    assert "does not verify" in capsys.readouterr().err
    assert LocalOsImageStore(tmp_path).list() == []


def test_cli_import_and_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    m = shipped().measurements[0]
    output = tmp_path / "mr.json"
    output.write_text(
        json.dumps({"mrtd": m.mrtd, "rtmr0": m.rtmr0, "rtmr1": m.rtmr1, "rtmr2": m.rtmr2})
    )
    vm = tmp_path / "vm.json"
    vm.write_text(quote_report_evidence().vm_config or "")
    args = ["import", str(output), "--os-image-hash", "cd" * 32, "--version", "dstack-9"]
    assert os_images_main([*args, "--vm-config", str(vm)]) == 0
    assert os_images_main(args) == 2  # dstack-mr output without its VM shape
    capsys.readouterr()
    assert os_images_main(["list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(e["os_image_hash"], e["read_only"], e["source"]) for e in listed} == {
        (VECTOR_HASH, True, "observed"),
        ("cd" * 32, False, "dstack-mr"),
    }


def test_cli_measure_without_a_dstack_mr_binary_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DSTACK_MR_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert os_images_main(["measure", str(tmp_path), "--vm-config", str(tmp_path / "v")]) == 2
    assert "no dstack-mr binary configured" in capsys.readouterr().err


def test_cli_measure_runs_the_configured_dstack_mr_and_records_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in for the dstack-mr binary (not available here): it checks the
    # arguments it is given and prints measure --json's shape.
    m = shipped().measurements[0]
    output = {"mrtd": m.mrtd, "rtmr0": m.rtmr0, "rtmr1": m.rtmr1, "rtmr2": m.rtmr2}
    tool = tmp_path / "dstack-mr"
    tool.write_text(
        "#!/bin/sh\n"
        'test "$1" = measure && test "$2" = --json || exit 3\n'
        'case "$*" in *"--cpu 16"*"--memory 68719476736"*) ;; *) exit 4 ;; esac\n'
        f"echo '{json.dumps(output)}'\n"
    )
    tool.chmod(0o755)
    image = tmp_path / "dstack-0.5.3"
    image.mkdir()
    (image / "metadata.json").write_text('{"version": "0.5.3"}')
    vm = tmp_path / "vm.json"
    vm.write_text(quote_report_evidence().vm_config or "")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert (
        os_images_main(["measure", str(image), "--vm-config", str(vm), "--dstack-mr", str(tool)])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["source"] == "dstack-mr" and printed["version"] == "0.5.3"
    stored = LocalOsImageStore(tmp_path / "data").get(VECTOR_HASH)
    assert stored is not None and stored.measurements == (m,)
