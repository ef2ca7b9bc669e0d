"""One runner interface (activate / infer / deactivate) for PyTorch, ONNX Runtime and TensorRT."""

from sase_deploy.engines.base import Runner
from sase_deploy.engines.ort import OrtRunner
from sase_deploy.engines.torch_runner import TorchRunner

__all__ = ["OrtRunner", "Runner", "TorchRunner"]
