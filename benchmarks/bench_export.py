"""Export wall time per registered model, per stage, and the simplifier choice, side by side.

    python benchmarks/bench_export.py                      # se_resnet50 (target: <= 10 s)
    python benchmarks/bench_export.py --models se_resnet50 spse_resnet50 --dynamic-batch

Prints (1) a table of `export_model` wall time and its stages (load = build + reference
forward, export = torch exporter, simplify = fold/cleanup/shape inference/naming, check = save +
onnx.checker full, parity = ORT CPU vs PyTorch) for the dynamo and TorchScript exporters, run
one after the other in this process so their ratio is meaningful on a shared machine; and
(2) onnx-graphsurgeon vs onnxslim on the same raw export (time, nodes left, parity of the
result against the raw graph). Fusion is timed separately (its own issue) with --fuse.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from sase_deploy import graph_io
from sase_deploy.export import export_model
from sase_deploy.export.exporters import export_onnx
from sase_deploy.models.registry import create_model, get_model_spec
from sase_deploy.models.spec import sample_inputs
from sase_deploy.runtime.compare import compare_outputs, worst_relative
from sase_deploy.runtime.ort import run_onnx

STAGES = ("load", "export", "simplify", "fuse", "check", "parity")
TARGETS_S = {"se_resnet50": 10.0}


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))


def bench_exports(models: list[str], dynamic: bool, fuse: bool, folder: Path) -> None:
    header = ["model", "exporter", "total s", *[f"{s} s" for s in STAGES], "nodes", "target"]
    widths = [20, 11, 8, 7, 9, 10, 7, 8, 9, 10, 8]
    print(_row(header, widths))
    for name in models:
        totals = {}
        for exporter in ("dynamo", "torchscript"):
            start = time.perf_counter()
            result = export_model(
                name,
                folder / f"{name}.{exporter}.onnx",
                exporter=exporter,
                dynamic_batch=dynamic,
                fuse=fuse,
            )
            total = time.perf_counter() - start
            totals[exporter] = total
            timings = result.manifest.timings_s
            counts = result.manifest.node_counts
            target = TARGETS_S.get(name)
            verdict = "-" if target is None else ("ok" if total <= target else f"> {target:g}")
            print(
                _row(
                    [
                        name,
                        exporter,
                        f"{total:.2f}",
                        *[f"{timings[s]:.2f}" if s in timings else "-" for s in STAGES],
                        f"{counts['exported']}->{counts['final']}",
                        verdict,
                    ],
                    widths,
                )
            )
        ratio = totals["dynamo"] / totals["torchscript"]
        print(f"  {name}: dynamo / torchscript wall time = {ratio:.2f}")


def bench_simplifiers(name: str) -> None:
    import onnx_graphsurgeon as gs  # noqa: F401  (imported for its version below)

    try:
        import onnxslim
    except ImportError:
        print("onnxslim not installed: simplifier comparison skipped")
        return
    spec = get_model_spec(name)
    model = create_model(name)
    feed = sample_inputs(spec.input_specs(), seed=0)
    args = tuple(torch.from_numpy(feed[i.name]) for i in spec.input_specs())
    print(f"\nsimplifiers on the raw {name} export (same input graph for each):")
    print(
        _row(
            ["exporter", "simplifier", "time s", "nodes in", "nodes out", "rel err"],
            [11, 18, 7, 9, 9, 9],
        )
    )
    for exporter in ("dynamo", "torchscript"):
        raw = export_onnx(
            model,
            args,
            input_names=[i.name for i in spec.input_specs()],
            output_names=spec.output_names,
            opset=18,
            dynamic_batch=False,
            exporter=exporter,
        ).model
        reference = run_onnx(raw, feed)
        for label, simplify in (
            ("onnx-graphsurgeon", graph_io.simplify),
            ("onnxslim", onnxslim.slim),
        ):
            start = time.perf_counter()
            simplified = simplify(raw)
            elapsed = time.perf_counter() - start
            err = worst_relative(compare_outputs(reference, run_onnx(simplified, feed)))
            print(
                _row(
                    [
                        exporter,
                        label,
                        f"{elapsed:.2f}",
                        str(len(raw.graph.node)),
                        str(len(simplified.graph.node)),
                        f"{err:.1e}",
                    ],
                    [11, 18, 7, 9, 9, 9],
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["se_resnet50"])
    parser.add_argument("--dynamic-batch", action="store_true")
    parser.add_argument("--fuse", action="store_true", help="include the fusion pass")
    parser.add_argument("--no-simplifier-comparison", action="store_true")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
        f"dynamic batch {args.dynamic_batch}, fuse {args.fuse}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench_exports(args.models, args.dynamic_batch, args.fuse, Path(tmp))
    if not args.no_simplifier_comparison:
        bench_simplifiers(args.models[0])


if __name__ == "__main__":
    main()
