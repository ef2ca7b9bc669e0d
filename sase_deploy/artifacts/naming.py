"""Names of artifacts on disk: a model's stem and precision, and where a manifest lives.

One rule for every stage: `<stem>.<precision>.<suffix>` for what `convert`, `calibrate` and
`build` write (`net.fp16.onnx`, `net.int8.onnx`, `net.fp16.engine`), `<stem>.calib.*` for the
calibration files, and `NAME.manifest.json` beside the artifact `NAME.<suffix>` it describes.
The stem of `net.fp16.onnx` is `net` (precision fp16), so the files made from it are named as
those made from `net.onnx`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sase_deploy.vocabulary import PRECISIONS

MANIFEST_SUFFIX = ".manifest.json"
BUNDLE_MANIFEST = "manifest.json"  # inside a `.bundle` folder: what the device gets
CALIBRATION_SUFFIXES = ("int8.onnx", "calib.cache", "calib.json")


def split_name(path: Path) -> tuple[str, str | None]:
    """(stem, precision) of an artifact path: `net.fp16.onnx` -> (`net`, `fp16`),
    `net.onnx` -> (`net`, None), `net.int8.engine` -> (`net`, `int8`).

    Args:
        path: an ONNX model, engine or bundle folder.
    """
    name = path.name.rpartition(".")[0] if "." in path.name else path.name
    base, _, last = name.rpartition(".")
    if base and last in PRECISIONS:
        return base, last
    return name, None


def model_stem(path: Path) -> str:
    """The model name of an artifact path without suffix and precision (`split_name`): the
    stem that calibration files (`<stem>.calib.json`, …) and artifacts (`<stem>.<precision>.*`)
    share.

    Args:
        path: e.g. `net.fp16.onnx` -> `net`.
    """
    return split_name(path)[0]


def artifact_path(folder: Path, stem: str, precision: str, suffix: str) -> Path:
    """`folder/<stem>.<precision><suffix>`, e.g. (`out`, `net`, `fp16`, `.onnx`) ->
    `out/net.fp16.onnx`.

    Args:
        folder: where the artifact goes. stem: `model_stem` of its source. precision: one of
            PRECISIONS. suffix: with its dot (`.onnx`, `.engine`, `.bundle`, `.manifest.json`).
    """
    return folder / f"{stem}.{precision}{suffix}"


def calibration_path(folder: Path, stem: str, suffix: str) -> Path:
    """`folder/<stem>.<suffix>` for a calibration file (`int8.onnx`, `calib.cache`,
    `calib.json`: CALIBRATION_SUFFIXES).

    Args:
        folder: the calibration output folder. stem: `model_stem` of the calibrated model.
        suffix: without the leading dot.
    """
    return folder / f"{stem}.{suffix}"


def manifest_path(artifact: Path) -> Path:
    """Where the manifest of `artifact` lives: `NAME.<suffix>` -> `NAME.manifest.json` beside it
    (`net.onnx` -> `net.manifest.json`, `net.fp16.engine`/`.bundle` -> `net.fp16.manifest.json`).

    Args:
        artifact: an export, an engine, an ONNX Runtime model or a bundle folder.
    """
    return artifact.with_name(artifact.name.rpartition(".")[0] + MANIFEST_SUFFIX)


def bundle_manifest_path(bundle: Path) -> Path:
    """The `manifest.json` inside a bundle folder (shipped to the device with it).

    Args:
        bundle: the `.bundle` folder.
    """
    return bundle / BUNDLE_MANIFEST


def fact_key(facts: dict[str, Any]) -> str:
    """The hex sha256 of `facts` as JSON with sorted keys (paths and other objects as str): the
    key of a build cache entry or a deploy stage; equal facts, equal key.

    Args:
        facts: everything that decides the output's bytes (input sha256s, options, versions).
    """
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
