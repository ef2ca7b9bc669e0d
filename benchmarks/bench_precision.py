"""Accuracy cost of FP16 and INT8 on ORT CPU, and calibration time, printed as Markdown tables.

1. digits models (trained checkpoints): top-1 accuracy on the shipped held-out split (540
   images) of FP32 / FP16 / INT8 with each calibration method (minmax, percentile, entropy;
   512 training images), unquantised layers in FP16 (default) and FP32, targets: FP16 drop
   <= 0.1 pt, INT8 drop <= 0.5 pt. This is the table in docs/precision.md
   (`--skip-fastgan --skip-timing > benchmarks/results/precision.md`);
2. fastgan_slim_256 (RANDOM-INIT weights: no trained checkpoint can be downloaded): PSNR of FP16
   and INT8 outputs vs FP32 on seeded latents, target FP16 >= 40 dB;
3. se_resnet50 (random-init weights, random-normal 224x224 "images": timing only): calibration
   of 512 samples, side by side with a plain FP32 ORT pass over the same samples (the machine is
   shared, so the ratio is the stable number).

Run from the repo root:  python benchmarks/bench_precision.py [--skip-digits] [--skip-fastgan]
[--skip-timing]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from sase_deploy.calibration import calibrate_onnx, convert_onnx
from sase_deploy.calibration.sources import LatentSource
from sase_deploy.export import export_model
from sase_deploy.graph_io import graph_inputs
from sase_deploy.models.digits import digits_checkpoint_file
from sase_deploy.runtime.compare import data_range, psnr
from sase_deploy.runtime.ort import OrtRunner

DIGITS = ("se_resnet_digits", "sase_resnet_digits")


METHODS = ("minmax", "percentile", "entropy")
# INT8 columns: each method with the unquantised layers in FP16 (the default) and in FP32
INT8_COLUMNS = tuple(f"{m}{suffix}" for suffix in ("", "/fp32") for m in METHODS)


def predict_all(model_path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Outputs of `model_path` over `feeds` through `OrtRunner` (on CPU it sets
    `session.disable_quant_qdq`: Q/DQ pairs computed in float, as TensorRT does, so INT8 numbers
    do not depend on whether the CPU has VNNI)."""
    runner = OrtRunner(model_path)
    with runner:
        first = runner.output_names[0]
        return np.concatenate([runner.infer(feed)[first] for feed in feeds])


def digits_accuracy(tmp: Path, name: str, checkpoint: Path) -> dict[str, float]:
    """Top-1 (%) of FP32, FP16 and INT8 per method on the shipped held-out split (540 images);
    INT8 calibrated on the first 512 training images (`write_data(..., "calibration")`, what
    `--data` gets for a registry model)."""
    from sase_deploy.models.registry import get_model_spec

    spec = get_model_spec(name)
    assert spec.write_data is not None
    calib = spec.write_data(tmp / f"{name}.calib.npz", "calibration")
    with np.load(spec.write_data(tmp / f"{name}.eval.npz", "eval")) as held_out:
        x, y = held_out["x"], held_out["y"]
    feeds = [{"x": x[i : i + 128]} for i in range(0, len(x), 128)]
    fp32 = tmp / f"{name}.onnx"
    export_model(name, fp32, checkpoint=checkpoint, dynamic_batch=True)
    paths = {"fp32": fp32, "fp16": convert_onnx(fp32, tmp / f"{name}.fp16.onnx").output}
    for column in INT8_COLUMNS:
        method, _, high = column.partition("/")
        result = calibrate_onnx(fp32, str(calib), tmp / column.replace("/", "-"), method=method,
                                samples=512, batch=32, high_precision=high or "fp16")  # fmt: skip
        paths[column] = result.int8_onnx
    return {
        label: 100.0 * float(np.mean(predict_all(path, feeds).argmax(1) == y))
        for label, path in paths.items()
    }


def digits_rows(tmp: Path, checkpoint_dir: Path | None) -> list[list[str]]:
    rows = []
    for name in DIGITS:
        if checkpoint_dir is None:
            checkpoint = digits_checkpoint_file(name)
        else:
            checkpoint = checkpoint_dir / f"{name}.pt"
        if not checkpoint.is_file():
            rows.append([name, *["-"] * (2 + len(INT8_COLUMNS)), f"no checkpoint {checkpoint}"])
            continue
        acc = digits_accuracy(tmp, name, checkpoint)
        drops = {label: acc["fp32"] - value for label, value in acc.items()}
        met = drops["fp16"] <= 0.1 + 1e-9 and all(drops[c] <= 0.5 + 1e-9 for c in INT8_COLUMNS)
        rows.append(
            [
                name,
                f"{acc['fp32']:.2f}",
                *(f"{acc[k]:.2f} ({-drops[k]:+.2f})" for k in ("fp16", *INT8_COLUMNS)),
                "met" if met else "MISSED",
            ]
        )
    return rows


def fastgan_row(tmp: Path, calib_samples: int) -> list[str]:
    import onnx

    fp32 = tmp / "fastgan_slim_256.onnx"
    export_model("fastgan_slim_256", fp32, dynamic_batch=True)
    fp16 = convert_onnx(fp32, tmp / "fastgan_slim_256.fp16.onnx").output
    int8 = calibrate_onnx(fp32, "latent:0", tmp, samples=calib_samples, batch=8).int8_onnx
    inputs = graph_inputs(onnx.load(fp32))
    feeds = list(LatentSource(inputs, 16, seed=123).batches(4))  # seeds unseen by calibration
    ref = predict_all(fp32, feeds)
    span = data_range(ref)
    # non-finite outputs (psnr None) print as -inf and fail, as they always have
    p16, p8 = (
        -math.inf if db is None else db
        for db in (psnr(ref, predict_all(m, feeds), span) for m in (fp16, int8))
    )
    verdict = "PASS" if p16 >= 40.0 else "FAIL"
    return [
        "fastgan_slim_256 (random init)",
        f"{p16:.1f}",
        f"{p8:.1f}",
        f"{verdict} (FP16 >= 40 dB; 16 latents, seed 123; INT8 calib {calib_samples} latents)",
    ]


def timing_rows(tmp: Path, samples: int, batch: int) -> list[list[str]]:
    import onnx

    fp32 = tmp / "se_resnet50.onnx"
    export_model("se_resnet50", fp32, dynamic_batch=True)
    source = LatentSource(graph_inputs(onnx.load(fp32)), samples, seed=0)
    runner = OrtRunner(fp32)
    with runner:
        start = time.perf_counter()
        for feed in source.batches(batch):
            runner.infer(feed)
        plain = time.perf_counter() - start
    rows = []
    for method in ("percentile", "minmax"):  # entropy collects like percentile
        result = calibrate_onnx(
            fp32, "latent:0", tmp / method, method=method, samples=samples, batch=batch
        )
        t = result.timings
        total = t["total_s"]
        rows.append(
            [
                method,
                f"{total:.1f}",
                f"{t['ranges_collect_s']:.1f}",
                f"{t['ranges_compute_s']:.1f}",
                f"{t['quantize_s']:.1f}",
                f"{plain:.1f}",
                f"{total / plain:.2f}",
                "PASS" if total <= 60 else "FAIL (> 60 s on this shared machine)",
            ]
        )
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """`title` as a paragraph, then a Markdown table (the docs paste this output as is)."""
    print(f"{title}\n")
    for line in (header, ["---"] * len(header), *rows):
        print("| " + " | ".join(str(c) for c in line) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="folder with <name>.pt (default: the packaged sase_deploy/assets/digits ones)",
    )
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-fastgan", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--fastgan-calib-samples", type=int, default=64)
    parser.add_argument("--timing-samples", type=int, default=512)
    parser.add_argument("--timing-batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_digits:
            rows = digits_rows(tmp, args.checkpoint_dir)
            print_table(
                "Digits top-1 accuracy (%, change vs FP32 in brackets) on the shipped held-out "
                "split (540 images), ORT CPU with Q/DQ computed in float as TensorRT does; INT8 "
                "calibrated on the first 512 training images; INT8 METHOD: layers not quantised "
                "in FP16 (the default), METHOD/fp32: in FP32 (--high-precision fp32). Target: "
                "FP16 drop <= 0.1 pt, every INT8 column's drop <= 0.5 pt.",
                ["model", "FP32", "FP16", *(f"INT8 {c}" for c in INT8_COLUMNS), "target"],
                rows,
            )
        if not args.skip_fastgan:
            print_table(
                "generator PSNR vs FP32, ORT CPU (dB)",
                ["model", "FP16", "INT8", "target"],
                [fastgan_row(tmp, args.fastgan_calib_samples)],
            )
        if not args.skip_timing:
            rows = timing_rows(tmp, args.timing_samples, args.timing_batch)
            print_table(
                f"se_resnet50 calibration, {args.timing_samples} random-normal samples at "
                f"224x224, batch {args.timing_batch}, ORT CPU (s)",
                [
                    "method",
                    "total",
                    "collect",
                    "compute",
                    "quantize",
                    "plain FP32 pass",
                    "ratio",
                    "<= 60 s",
                ],
                rows,
            )


if __name__ == "__main__":
    main()
