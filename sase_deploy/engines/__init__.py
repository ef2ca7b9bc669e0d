"""The build stage: TensorRT flavours, targets, engines, bundles (`sase_deploy.engines.build`),
and the TensorRT runner (`engines/tensorrt.py`, which needs the flavour selection).

The PyTorch and ONNX Runtime runners and the runner template live one layer down, in
`sase_deploy.runtime`. Nothing is imported here, so the CLI can read this package's constants
without loading ONNX, ONNX Runtime or TensorRT.
"""
