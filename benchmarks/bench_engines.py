"""Which zoo models become TensorRT-RTX engines, at which precision, and what the engines hold.

For every registered model (or `--models a,b`) and precision (fp32 / fp16 / int8 by default):
export it fused with a dynamic batch (`export_model(..., dynamic_batch=True)`; the digits models
with their packaged trained checkpoints `sase_deploy/assets/digits/<name>.pt`, the others with
random-init weights at `torch.manual_seed(--seed)`, default 0), then `build(BuildRequest(...,
backend="tensorrt-rtx"))` for `--target` (default l4, SM89), which makes the FP16 graph
(`convert`) or the INT8 Q/DQ graph (`calibrate`) itself and builds the engine ahead of time;
no GPU is needed. INT8 calibration data (`--samples`, default 32, keeps it fast):
- digits models: the digits train split (x/y saved to an .npz);
- 224x224 image models: seeded random-normal inputs of the input shape (an .npz). The weights
  are random-init too, so those INT8 rows measure buildability and build time only, not accuracy;
- generators: `latent:0` (seeded latents, as `sase-deploy calibrate --data latent:0`).

Prints one Markdown table: parse ok / build ok (a failure is reported, not fatal: the message's
first 80 characters go to the error column; an export that misses ONNX Runtime parity is such a
failure too: the zoo's are all fixed now, user models may still miss it),
network layers, Q/DQ layers (QUANTIZE + DEQUANTIZE), layers with a HALF output, builder seconds
(engine build only: the export, convert and calibrate time is in the JSON as `wall_s`), engine
size in MB (10^6 bytes); then "built N of M". The table and a JSON of the rows go to `--out`.

`--run` (GPU only) also times PyTorch CUDA eager and ORT CUDA FP32 / FP16 at batch 1 and 8
(median of 20 runs after 5 warm-ups); without a CUDA GPU it says so and skips.

Run from the repo root:
    python benchmarks/bench_engines.py                          # whole zoo, out/engines
    python benchmarks/bench_engines.py --models se_resnet18 --precisions fp16,int8 --samples 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sase_deploy.engines.build import BuildResult, build
from sase_deploy.engines.request import BuildRequest
from sase_deploy.errors import ParityError, SaseDeployError, UserError
from sase_deploy.export import export_model
from sase_deploy.models.digits import digits_checkpoint_file
from sase_deploy.models.registry import MODEL_SPECS, get_model_spec
from sase_deploy.vocabulary import PRECISIONS

DIGITS = ("se_resnet_digits", "sase_resnet_digits")
COLUMNS = (
    "model", "precision", "parse ok", "build ok", "layers", "Q/DQ layers", "HALF tensors",
    "build s", "engine MB", "error / note",
)  # fmt: skip
KEYS = (
    "model", "precision", "parse_ok", "build_ok", "layers", "qdq_layers", "half_tensors",
    "build_s", "engine_mb", "error",
)  # fmt: skip
RUN_BATCHES = (1, 8)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export(name: str, folder: Path, seed: int) -> Path:
    """The fused dynamic-batch FP32 export of `name` (digits: with the trained checkpoint).

    Random-init weights come from torch's global RNG, seeded here so that a rerun exports the
    same bytes (and `build` finds its cached engines)."""
    import torch

    torch.manual_seed(seed)
    out = folder / f"{name}.onnx"
    checkpoint = digits_checkpoint_file(name) if name in DIGITS else None
    export_model(name, out, checkpoint=checkpoint, dynamic_batch=True)
    return out


def calibration_data(name: str, folder: Path, samples: int) -> str:
    """The `data` argument of an INT8 build of `name` (see the module docstring)."""
    if name in DIGITS:
        from sase_deploy.models.digits_data import load_digits_split

        path = folder / "digits_train.npz"
        if not path.is_file():
            split = load_digits_split()
            np.savez(path, x=split.x_train, y=split.y_train)
        return str(path)
    spec = get_model_spec(name)
    if spec.task == "generation":
        return "latent:0"
    from sase_deploy.models.spec import sample_inputs

    arrays = sample_inputs(spec.inputs, seed=0, batch=samples)
    path = folder / f"{name}.random{samples}.npz"
    np.savez(path, **arrays)
    return str(path)


def engine_row(name: str, precision: str, result: BuildResult) -> dict[str, Any]:
    manifest = result.manifest
    types = manifest.layer_types or {}
    dtypes = manifest.tensor_dtypes or {}
    return {
        "model": name,
        "precision": precision,
        "parse_ok": "yes",
        "build_ok": "yes",
        "layers": manifest.layers,
        "qdq_layers": types.get("QUANTIZE", 0) + types.get("DEQUANTIZE", 0),
        "half_tensors": dtypes.get("HALF", 0),
        "build_s": manifest.build_seconds,
        "engine_mb": round((manifest.engine_bytes or 0) / 1e6, 1),
        "error": "",
        "cached": result.cached,
        "engine": str(result.artifact),
        "built_onnx": str(manifest.built_onnx.path),
        "layer_types": types,
        "tensor_dtypes": dtypes,
    }


def failed_row(name: str, precision: str, stage: str, exc: SaseDeployError) -> dict[str, Any]:
    """A failure: the parser's "rejects" means parse failed; a builder failure parsed fine;
    an export / convert / calibrate failure never reached the parser ("-")."""
    message = " ".join(str(exc).split())
    parse_ok = "-"
    if stage == "build" and " rejects " in message:
        parse_ok = "no"
    elif stage == "build" and " failed to build " in message:
        parse_ok = "yes"
    row = dict.fromkeys(KEYS, "-")
    row.update(
        model=name,
        precision=precision,
        parse_ok=parse_ok,
        build_ok="no",
        error=f"{stage}: {message}"[:80],
        full_error=f"{stage}: {message}",
    )
    return row


def bench_model(name: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Export `name` once, then one build per precision; UserErrors (and an export's
    ParityError, a deliberate failure too) become rows; anything else is a bug and propagates."""
    start = time.perf_counter()
    log(f"{name}: export")
    note = ""
    try:
        onnx_path = export(name, out / "onnx", args.seed)
    except ParityError as exc:  # ORT differs from PyTorch: the graph is kept, and still built
        onnx_path = out / "onnx" / f"{name}.parity-failed.onnx"
        worst = str(exc).split(" by ", 1)[-1].split(" x ", 1)[0]
        note = f"export parity failed ({worst} x scale, random init); built the kept file"
    except UserError as exc:
        return [failed_row(name, p, "export", exc) for p in args.precisions]
    export_s = round(time.perf_counter() - start, 2)
    rows = []
    for precision in args.precisions:
        log(f"{name}: build {precision}")
        start = time.perf_counter()
        try:
            data = (
                calibration_data(name, out / "data", args.samples) if precision == "int8" else None
            )
            request = BuildRequest(
                onnx_path,
                args.target,
                out,
                precision=precision,
                backend="tensorrt-rtx",
                data=data,
                samples=args.samples,
            )
            row = engine_row(name, precision, build(request))
        except UserError as exc:
            row = failed_row(name, precision, "build", exc)
        row.update(export_s=export_s, wall_s=round(time.perf_counter() - start, 2))
        row["error"] = row["error"] or note
        log(f"{name}: {precision} build ok={row['build_ok']} {row['error']}")
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[k]) for k in KEYS) + " |" for row in rows]
    built = sum(row["build_ok"] == "yes" for row in rows)
    return "\n".join([*lines, "", f"built {built} of {len(rows)}"])


def gpu_missing() -> str | None:
    """Why GPU timing cannot run here, or None when it can."""
    import onnxruntime
    import torch

    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA GPU or driver on this machine)"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def median_ms(infer: Any, feed: dict[str, np.ndarray], warmup: int = 5, iters: int = 20) -> float:
    for _ in range(warmup):
        infer(feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        infer(feed)  # both runners return host arrays, so each call is synchronised
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def time_on_gpu(rows: list[dict[str, Any]], out: Path) -> str:
    """Markdown table: PyTorch CUDA eager and ORT CUDA FP32 / FP16, ms per batch (1 and 8)."""
    from sase_deploy.models.registry import create_model
    from sase_deploy.models.spec import sample_inputs
    from sase_deploy.runtime.ort import OrtCudaRunner
    from sase_deploy.runtime.torch_runner import TorchRunner

    fp16 = {
        r["model"]: r["built_onnx"] for r in rows if r["precision"] == "fp16" and r.get("engine")
    }
    lines = ["| model | batch | PyTorch CUDA ms | ORT CUDA FP32 ms | ORT CUDA FP16 ms |"]
    lines.append("|---|---|---|---|---|")
    for name in dict.fromkeys(r["model"] for r in rows):
        spec, fp32 = get_model_spec(name), out / "onnx" / f"{name}.onnx"
        if not fp32.is_file():
            continue
        runners = [TorchRunner(create_model(name), [i.name for i in spec.inputs],
                               spec.output_names, device="cuda"),
                   OrtCudaRunner(fp32)]  # fmt: skip
        if fp16.get(name):
            runners.append(OrtCudaRunner(Path(fp16[name])))
        for batch in RUN_BATCHES:
            feed = sample_inputs(spec.inputs, seed=0, batch=batch)
            cells = []
            for runner in runners:
                with runner:
                    cells.append(f"{median_ms(runner.infer, feed):.2f}")
            cells += ["-"] * (3 - len(cells))
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [spec.name for spec in MODEL_SPECS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names), help="comma list (default: all)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="fp32,fp16,int8")
    parser.add_argument("--samples", type=int, default=32, help="INT8 calibration samples")
    parser.add_argument("--target", default="l4", help="sase-deploy targets (default l4, SM89)")
    parser.add_argument("--out", type=Path, default=Path("out/engines"))
    parser.add_argument("--seed", type=int, default=0, help="torch seed of random-init weights")
    parser.add_argument("--run", action="store_true", help="GPU only: time PyTorch / ORT CUDA")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    for name in args.models:
        get_model_spec(name)  # an unknown name fails before minutes of work
    bad = sorted(set(args.precisions) - set(PRECISIONS))
    if bad:
        parser.error(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out
    for sub in ("onnx", "data"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, args, out)]
    table = markdown(rows)
    print(table)
    print(f"total wall time {time.perf_counter() - start:.0f} s")
    (out / f"engines_{args.target}.md").write_text(table + "\n")
    (out / f"engines_{args.target}.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.run:
        why = gpu_missing()
        if why is not None:
            print(f"\n--run skipped: {why}")
        else:
            timing = time_on_gpu(rows, out)
            print("\n" + timing)
            (out / "gpu_timing.md").write_text(timing + "\n")


if __name__ == "__main__":
    main()
