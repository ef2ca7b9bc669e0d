"""The artifacts module: names, the key, and every manifest kind read and written through it,
including the files sase-deploy 0.2.0 wrote (tests/data/manifests_0.2.0, made by that version's
`deploy se_resnet_digits --targets rtx,orin-nano`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sase_deploy.artifacts import (
    ENGINE_FORMAT,
    BundleManifest,
    CalibrationRecord,
    DeployStateRecord,
    EngineManifest,
    ExportManifest,
    Record,
    artifact_path,
    fact_key,
    manifest_path,
    model_stem,
    read_record,
    split_name,
    try_read,
    write_record,
)
from sase_deploy.errors import UserError

OLD = Path(__file__).parent / "data" / "manifests_0.2.0"
KINDS: list[tuple[str, type[Record]]] = [
    ("export.manifest.json", ExportManifest),
    ("engine-rtx.manifest.json", EngineManifest),
    ("engine-bundle.manifest.json", EngineManifest),
    ("bundle.manifest.json", BundleManifest),
    ("calib.json", CalibrationRecord),
    ("deploy.state.json", DeployStateRecord),
]


@pytest.mark.parametrize(
    ("name", "stem", "precision"),
    [
        ("net.onnx", "net", None),
        ("net.fp16.onnx", "net", "fp16"),
        ("net.int8.engine", "net", "int8"),
        ("net.fp32.bundle", "net", "fp32"),
        ("net.parity-failed.onnx", "net.parity-failed", None),
        ("se.v2.onnx", "se.v2", None),
    ],
)
def test_one_stem_rule(name: str, stem: str, precision: str | None) -> None:
    assert split_name(Path(name)) == (stem, precision)
    assert model_stem(Path("out") / name) == stem


def test_names_of_what_each_stage_writes() -> None:
    assert artifact_path(Path("o"), "net", "fp16", ".onnx") == Path("o/net.fp16.onnx")
    assert manifest_path(Path("o/net.onnx")) == Path("o/net.manifest.json")
    assert manifest_path(Path("o/rtx/net.fp16.engine")) == Path("o/rtx/net.fp16.manifest.json")
    assert manifest_path(Path("o/j/net.int8.bundle")) == Path("o/j/net.int8.manifest.json")


def test_fact_key_is_the_sha256_of_sorted_json() -> None:
    facts = {"b": 1, "a": Path("x"), "c": (1, 2)}
    text = json.dumps({"a": "x", "b": 1, "c": [1, 2]}, sort_keys=True)
    assert fact_key(facts) == hashlib.sha256(text.encode()).hexdigest()
    assert fact_key(facts) != fact_key({**facts, "b": 2})


def test_0_2_0_manifests_read_with_todays_field_names() -> None:
    raw = {name: json.loads((OLD / name).read_text()) for name, _ in KINDS}
    export = read_record(OLD / "export.manifest.json", ExportManifest)
    assert export.sha256 == raw["export.manifest.json"]["onnx_sha256"]
    assert export.registry_model == "se_resnet_digits"
    engine = read_record(OLD / "engine-rtx.manifest.json", EngineManifest)
    old = raw["engine-rtx.manifest.json"]
    assert engine.sha256 == old["artifact_sha256"]
    assert engine.built_onnx_sha256 == old["built_onnx"]["sha256"]
    assert engine.built_onnx.path == Path(old["built_onnx"]["path"])
    assert engine.inputs_sha256 == old["inputs"] and engine.target_name == "rtx"
    bundled = read_record(OLD / "engine-bundle.manifest.json", EngineManifest)
    assert bundled.built_onnx.flags == ("int8",) and bundled.built_onnx.calib_cache is not None
    bundle = read_record(OLD / "bundle.manifest.json", BundleManifest)
    assert bundle.files_sha256 == raw["bundle.manifest.json"]["sha256"]
    assert bundle.engine_file == "se_resnet_digits.orin-nano.int8.engine"
    assert bundle.profile == raw["bundle.manifest.json"]["source"]["profile"]
    calib = read_record(OLD / "calib.json", CalibrationRecord)
    assert calib.amax(OLD)["add_146"] == raw["calib.json"]["tensors"]["add_146"]["amax"]
    state = read_record(OLD / "deploy.state.json", DeployStateRecord)
    old_stages = raw["deploy.state.json"]["stages"]
    assert {n: s.outputs_sha256 for n, s in state.stages.items()} == {
        n: s["outputs"] for n, s in old_stages.items()
    }


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_written_records_read_back_the_same(name: str, kind: type[Record], tmp_path: Path) -> None:
    record = read_record(OLD / name, kind)
    path = write_record(tmp_path / name, record)
    again = read_record(path, kind)
    assert again == record
    written = json.loads(path.read_text())
    assert written.get("format", kind.FORMAT) == kind.FORMAT
    assert not {"onnx_sha256", "artifact_sha256"} & set(written)


def test_calibration_json_reads_as_fp32_around_int8(tmp_path: Path) -> None:
    """0.2.0's calibration record reads (its unquantised layers were FP32) and is written back
    with the same values plus the two fields added since (`high_precision`, `min_channels`)."""
    record = read_record(OLD / "calib.json", CalibrationRecord)
    assert (record.high_precision, record.min_channels) == ("fp32", 0)
    written = json.loads(write_record(tmp_path / "calib.json", record).read_text())
    old = json.loads((OLD / "calib.json").read_text())
    assert {k: v for k, v in written.items() if k in old} == old
    assert set(written) - set(old) == {"high_precision", "min_channels"}


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_unreadable_or_foreign_files_are_one_line_errors(
    name: str, kind: type[Record], tmp_path: Path
) -> None:
    path = tmp_path / name
    for text in ("{not json", json.dumps({"format": "sase-deploy.other/9"}), "[1]"):
        path.write_text(text)
        with pytest.raises(UserError) as info:
            read_record(path, kind)
        assert "\n" not in str(info.value) and kind.REMEDY in str(info.value)
        assert try_read(path, kind) is None
    assert try_read(tmp_path / "missing.json", kind) is None


def test_incomplete_manifest_names_what_is_missing(tmp_path: Path) -> None:
    data = json.loads((OLD / "export.manifest.json").read_text())
    del data["opset"]
    (tmp_path / "m.manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"\(no opset\); export the model again"):
        read_record(tmp_path / "m.manifest.json", ExportManifest)


def test_an_old_engine_manifest_is_no_cache_hit(tmp_path: Path) -> None:
    """0.2.0's key hashed its own format: the same facts key differently now, so `build` makes
    the artifact again rather than trust a manifest of the old format."""
    from sase_deploy.engines.cache import cached_manifest

    old = json.loads((OLD / "engine-rtx.manifest.json").read_text())
    keyed = list(old)[: list(old).index("cache_key")]
    recorded = {k: old[k] for k in keyed}
    assert fact_key(recorded) == old["cache_key"]  # how 0.2.0 made its key
    assert fact_key({**recorded, "format": ENGINE_FORMAT}) != old["cache_key"]
    path = tmp_path / "se_resnet_digits.fp16.manifest.json"
    shutil.copyfile(OLD / "engine-rtx.manifest.json", path)
    assert cached_manifest(path, fact_key({**recorded, "format": ENGINE_FORMAT})) is None
