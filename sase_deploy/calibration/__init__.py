"""Precision stage: INT8 calibration (Q/DQ ONNX, TensorRT 10 cache, ranges json) and FP16.

Entry points: `calibrate_onnx` (INT8) and `convert_onnx` (FP16).
"""

from sase_deploy.calibration.api import (
    CalibrationResult,
    ConvertResult,
    calibrate_onnx,
    convert_onnx,
    read_calib_json,
)
from sase_deploy.calibration.options import CalibrateOptions, ConvertOptions, PrecisionOptions

__all__ = [
    "CalibrateOptions",
    "CalibrationResult",
    "ConvertOptions",
    "ConvertResult",
    "PrecisionOptions",
    "calibrate_onnx",
    "convert_onnx",
    "read_calib_json",
]
