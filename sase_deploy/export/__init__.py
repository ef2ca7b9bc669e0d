"""export stage: PyTorch model -> checked, canonical, parity-tested ONNX plus a manifest."""

from sase_deploy.export.api import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    ExportOptions,
    ExportResult,
    export_model,
)

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportOptions",
    "ExportResult",
    "export_model",
]
