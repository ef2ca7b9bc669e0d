"""Artifacts on disk and their manifests: names, records, one reader, one writer, one key.

Sits just above `graph_io` (imports only `errors`, `_io`, `vocabulary`): every stage that writes
or reads a manifest (export, calibration, engines, report, deploy, serving) goes through here.

- `naming`: `split_name` / `model_stem` (`net.fp16.onnx` -> `net`, fp16), `artifact_path`,
  `calibration_path`, `manifest_path` (`NAME.manifest.json` beside `NAME.<suffix>`), and
  `fact_key`, the sha256 of a fact dict that keys the build cache and deploy's stage skipping.
- `records`: `ExportManifest`, `EngineManifest` (+ `BuiltOnnx`), `BundleManifest`,
  `CalibrationRecord`, `DeployStateRecord`; their docstring states the hash-field convention.
- `store`: `read_record` (today's format, or an older one upgraded; else a one-line
  UserError), `try_read`, `write_record` (atomic).
"""

from sase_deploy.artifacts.naming import (
    BUNDLE_MANIFEST,
    MANIFEST_SUFFIX,
    artifact_path,
    bundle_manifest_path,
    calibration_path,
    fact_key,
    manifest_path,
    model_stem,
    split_name,
)
from sase_deploy.artifacts.records import (
    BUNDLE_FORMAT,
    CALIB_FORMAT,
    ENGINE_FORMAT,
    EXPORT_FORMAT,
    STATE_FORMAT,
    BuiltOnnx,
    BundleManifest,
    CalibrationRecord,
    DeployStateRecord,
    EngineManifest,
    ExportManifest,
    Record,
    StageRecord,
)
from sase_deploy.artifacts.store import read_record, try_read, write_record

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_MANIFEST",
    "CALIB_FORMAT",
    "ENGINE_FORMAT",
    "EXPORT_FORMAT",
    "MANIFEST_SUFFIX",
    "STATE_FORMAT",
    "BuiltOnnx",
    "BundleManifest",
    "CalibrationRecord",
    "DeployStateRecord",
    "EngineManifest",
    "ExportManifest",
    "Record",
    "StageRecord",
    "artifact_path",
    "bundle_manifest_path",
    "calibration_path",
    "fact_key",
    "manifest_path",
    "model_stem",
    "read_record",
    "split_name",
    "try_read",
    "write_record",
]
