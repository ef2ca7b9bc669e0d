"""export stage: PyTorch model -> checked, canonical, parity-tested ONNX plus a manifest."""

from sase_deploy.export.api import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    ExportOptions,
    ExportResult,
    export_model,
)
from sase_deploy.export.source import parse_model_args, parse_shape

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportOptions",
    "ExportResult",
    "export_model",
    "parse_model_args",
    "parse_shape",
]
