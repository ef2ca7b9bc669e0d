"""What an INT8 engine computes in, with FP16 and with FP32 around the quantised layers.

SE-ResNet-50 (seeded random init, fused, dynamic batch) is calibrated (percentile, `--samples`
seeded random-normal 224x224 inputs) twice, `--high-precision fp16` (the default) and `fp32`,
and each INT8 ONNX is built with TensorRT-RTX for `--target` (default l4, SM89; no GPU needed).
Printed as Markdown: the network's layers by the type they compute in (constants aside, as
`build` prints them), INT8 weight tensors, ONNX and engine size. This is the table in
docs/precision.md ("INT8 + FP16 in the engine").

Run from the repo root:  python benchmarks/bench_int8_layers.py [--model se_resnet50]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from sase_deploy.calibration import calibrate_onnx
from sase_deploy.engines.build import build
from sase_deploy.engines.request import BuildRequest
from sase_deploy.export import export_model
from sase_deploy.graph_io import graph_inputs


def int8_weights(path: Path) -> int:
    """DequantizeLinear nodes reading an INT8 initializer: the quantised weight tensors."""
    model = onnx.load(path, load_external_data=False)
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    return sum(n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in model.graph.node)


def row(tmp: Path, fp32: Path, data: str, high: str, target: str, samples: int) -> list[str]:
    result = calibrate_onnx(fp32, data, tmp / high, samples=samples, high_precision=high)
    request = BuildRequest(result.int8_onnx, target, tmp / f"engines-{high}", precision="int8")
    summary = build(request).to_dict()
    dtypes = summary["compute_dtypes"] or {}
    return [
        high,
        str(dtypes.get("INT8", 0)),
        str(dtypes.get("HALF", 0)),
        str(dtypes.get("FLOAT", 0)),
        str(int8_weights(result.int8_onnx)),
        f"{result.int8_onnx.stat().st_size / 1e6:.1f}",
        f"{summary['engine_bytes'] / 1e6:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="se_resnet50")
    parser.add_argument("--target", default="l4")
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-int8-layers-") as name:
        tmp = Path(name)
        fp32 = tmp / f"{args.model}.onnx"
        export_model(args.model, fp32, dynamic_batch=True)
        shape = graph_inputs(onnx.load(fp32))[0].shape[1:]
        x = np.random.default_rng(0).standard_normal((args.samples, *shape)).astype(np.float32)
        np.savez(tmp / "data.npz", x=x)
        rows = [
            row(tmp, fp32, str(tmp / "data.npz"), high, args.target, args.samples)
            for high in ("fp32", "fp16")
        ]
    header = ["around INT8", "INT8 layers", "FP16 layers", "FP32 layers", "INT8 weights",
              "ONNX MB", "engine MB"]  # fmt: skip
    print(f"{args.model} INT8, TensorRT-RTX for {args.target}: layers by the type they compute")
    print("in (constants aside)\n")
    for line in (header, ["---"] * len(header), *rows):
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
