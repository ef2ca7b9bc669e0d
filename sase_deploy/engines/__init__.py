"""One runner interface (activate / infer / deactivate) for PyTorch, ONNX Runtime and TensorRT,
and the build stage: TensorRT flavours, targets, engines, bundles (`sase_deploy.engines.build`).

TensorRT is imported lazily: `sase_deploy.engines.tensorrt.TrtRunner` needs it, this package
does not.
"""

from sase_deploy.engines.base import Runner
from sase_deploy.engines.ort import OrtCudaRunner, OrtRunner
from sase_deploy.engines.torch_runner import TorchRunner

__all__ = ["OrtCudaRunner", "OrtRunner", "Runner", "TorchRunner"]
