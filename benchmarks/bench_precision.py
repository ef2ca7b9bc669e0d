"""Accuracy cost of FP16 and INT8 on ORT CPU, and calibration time, printed as tables.

1. digits models (trained checkpoints): top-1 test accuracy FP32 / FP16 / INT8 (default
   percentile calibration on 512 training images; entropy shown for comparison), targets:
   FP16 drop <= 0.1 pt, INT8 drop <= 0.5 pt;
2. fastgan_slim_256 (RANDOM-INIT weights: no trained checkpoint can be downloaded): PSNR of FP16
   and INT8 outputs vs FP32 on seeded latents, target FP16 >= 40 dB;
3. se_resnet50 (random-init weights, random-normal 224x224 "images": timing only): calibration
   of 512 samples, side by side with a plain FP32 ORT pass over the same samples (the machine is
   shared, so the ratio is the stable number).

Run from the repo root:  python benchmarks/bench_precision.py [--skip-timing]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sase_deploy.calibration import calibrate_onnx, convert_onnx
from sase_deploy.calibration.sensitivity import psnr
from sase_deploy.calibration.sources import LatentSource, graph_inputs
from sase_deploy.engines.ort import OrtRunner
from sase_deploy.export import export_model
from sase_deploy.models.digits import digits_checkpoint_file

DIGITS = ("se_resnet_digits", "sase_resnet_digits")


def predict_all(model_path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    runner = OrtRunner(model_path)
    with runner:
        first = runner.output_names[0]
        return np.concatenate([runner.infer(feed)[first] for feed in feeds])


def digits_rows(tmp: Path, checkpoint_dir: Path | None) -> list[list[str]]:
    from sase_deploy.models.digits_data import load_digits_split

    split = load_digits_split()
    calib = tmp / "digits_calib.npz"
    np.savez(calib, x=split.x_train[:512], y=split.y_train[:512])
    test_feeds = [{"x": split.x_test[i : i + 128]} for i in range(0, len(split.x_test), 128)]
    rows = []
    for name in DIGITS:
        if checkpoint_dir is None:
            checkpoint = digits_checkpoint_file(name)
        else:
            checkpoint = checkpoint_dir / f"{name}.pt"
        if not checkpoint.is_file():
            rows.append([name, "-", "-", "-", "-", f"no checkpoint {checkpoint}"])
            continue
        fp32 = tmp / f"{name}.onnx"
        export_model(name, fp32, checkpoint=checkpoint, dynamic_batch=True)
        fp16 = convert_onnx(fp32, tmp / f"{name}.fp16.onnx").output
        int8 = calibrate_onnx(fp32, str(calib), tmp, samples=512, batch=32).int8_onnx
        entropy = calibrate_onnx(
            fp32, str(calib), tmp / "entropy", method="entropy", samples=512, batch=32
        ).int8_onnx
        acc = {
            label: 100.0 * float(np.mean(predict_all(path, test_feeds).argmax(1) == split.y_test))
            for label, path in (("fp32", fp32), ("fp16", fp16), ("int8", int8), ("ent", entropy))
        }
        d16, d8 = acc["fp32"] - acc["fp16"], acc["fp32"] - acc["int8"]
        verdict = "PASS" if d16 <= 0.1 + 1e-9 and d8 <= 0.5 + 1e-9 else "FAIL"
        rows.append(
            [
                name,
                f"{acc['fp32']:.2f}",
                f"{acc['fp16']:.2f} ({-d16:+.2f})",
                f"{acc['int8']:.2f} ({-d8:+.2f})",
                f"{acc['ent']:.2f} ({acc['ent'] - acc['fp32']:+.2f})",
                f"{verdict} (FP16/INT8 drops <= 0.1 / 0.5 pt, n={len(split.y_test)})",
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
    p16, p8 = psnr(ref, predict_all(fp16, feeds)), psnr(ref, predict_all(int8, feeds))
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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


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
                "digits test accuracy, ORT CPU (%; INT8 calibrated on 512 train images)",
                [
                    "model",
                    "FP32",
                    "FP16 (delta)",
                    "INT8 percentile (delta)",
                    "INT8 entropy (delta)",
                    "target",
                ],
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
