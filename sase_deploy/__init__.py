"""sase-deploy: squeeze-excitation models from PyTorch to ONNX Runtime and TensorRT.

Flow (one subpackage per stage, each a plain function over files or in-memory ONNX):
models -> export -> rewrite -> calibration -> engines -> report.
"""

__version__ = "0.2.0"
