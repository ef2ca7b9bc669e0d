"""TensorRT 10 calibration cache: write and parse (for implicit-INT8 builds on TRT 10 / Jetson).

Format (written by TensorRT's calibrators, read back by `readCalibrationCache`): a header line
`TRT-<version>-<algorithm>`, then one `tensor_name: <scale>` line per tensor where the scale is
amax/127 as the 8 hex digits of its big-endian IEEE float32. Tensor names are the ONNX tensor
names of the FP32 graph (graph inputs and node outputs), which the TRT ONNX parser keeps.
No library writes this file from ranges computed elsewhere, so it is written by hand here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from sase_deploy.errors import UserError

# TensorRT has no percentile calibrator; percentile ranges are shipped under the entropy header,
# the calibrator class Polygraphy and trtexec use by default.
ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "percentile": "EntropyCalibration2",
}
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6
MIN_SCALE = 1e-12  # a tensor that was always 0 still needs a positive scale


@dataclass(frozen=True)
class CalibrationCache:
    header: str
    scales: dict[str, float]


def trt_version_code(version: str) -> int:
    """NV_TENSORRT_VERSION as cache headers spell it: `10.3.0` -> 100300 (10 and later:
    major*10000 + minor*100 + patch), `8.5.2` -> 8502 (8.x: major*1000 + minor*100 + patch)."""
    try:
        parts = [int(p) for p in version.split(".")]
    except ValueError as exc:
        raise UserError(f"TensorRT version '{version}' is not like 10.3.0") from exc
    major, minor, patch = [*parts, 0, 0][:3]
    return (major * 10000 if major >= 10 else major * 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def format_cache(
    amax: Mapping[str, float], method: str, trt_version: str = DEFAULT_TRT_VERSION
) -> str:
    header = f"TRT-{trt_version_code(trt_version)}-{ALGORITHMS[method]}"
    lines = [header]
    for name, value in amax.items():
        lines.append(f"{name}: {scale_to_hex(max(value / 127.0, MIN_SCALE))}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> CalibrationCache:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise UserError("not a TensorRT calibration cache: the first line must be TRT-<ver>-<algo>")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or len(value) != 8:
            raise UserError(
                f"calibration cache line {number} is not 'name: 8-hex-digits': {line!r}"
            )
        scales[name] = hex_to_scale(value)
    return CalibrationCache(lines[0], scales)


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    with open(path, encoding="utf-8") as fh:
        return parse_cache(fh.read())
