"""`fuse` on files users bring: TorchScript vs dynamo exports of the same SLIM/SASE blocks.

Run:  python benchmarks/bench_fuse_exporters.py [--runs 30] [--threads 1] [--out FILE.md]

Per block (the test-suite's user-style SLIM block, written as training code is, and the zoo's
SLIMBlock) and per export (dynamo opset 18, TorchScript opset 17 with a static and with a
dynamic batch, as `torch.onnx.export(..., dynamo=False)` writes them): nodes in the file, after
canonicalisation, after fusion; blocks found; ORT CPU latency of the file as exported vs the
fused file, timed as interleaved pairs (bench_fusion.time_pair: medians, speedup = median of
per-pair ratios). The acceptance line: every TorchScript export fuses to one SASE block and is
>= 1.8x faster, as the dynamo export is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from bench_fusion import time_pair
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the user-style block
from export_user_models import UserStyleSlim

from sase_deploy.models.slim import SLIMBlock
from sase_deploy.rewrite.api import fuse_file

TARGET_SPEEDUP = 1.8
BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "user-style SLIM (64->16, G=4, 8->32)": UserStyleSlim,
    "zoo SLIMBlock (64->16, G=4, 8->32)": lambda: SLIMBlock(64, 8, 16, 32),
}
EXPORTS = (("dynamo", 18, False), ("torchscript", 17, False), ("torchscript", 17, True))


def export(module: nn.Module, exporter: str, opset: int, dynamic: bool, path: Path) -> None:
    args = (torch.randn(1, 64, 8, 8), torch.randn(1, 16, 32, 32))
    names = ["xs", "xb"]
    axes = {n: {0: "batch"} for n in [*names, "out"]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=exporter == "dynamo",
            opset_version=opset,
            input_names=names,
            output_names=["out"],
            dynamic_axes=axes,
            external_data=False,
        )


def measure(runs: int, threads: int, folder: Path) -> list[dict[str, object]]:
    rows = []
    for label, factory in BLOCKS.items():
        torch.manual_seed(0)
        module = factory().eval()
        for exporter, opset, dynamic in EXPORTS:
            src = folder / "block.onnx"
            export(module, exporter, opset, dynamic, src)
            summary = fuse_file(src, folder / "fused.onnx")
            raw, fused = onnx.load(src), onnx.load(folder / "fused.onnx")
            before_ms, after_ms, speedup = time_pair(raw, fused, runs, threads)
            rows.append(
                {
                    "block": label,
                    "export": f"{exporter} {opset}" + (" dyn-batch" if dynamic else ""),
                    "nodes": f"{summary['nodes_in_file']} / {summary['nodes_before']} / "
                    f"{summary['nodes_after']}",
                    "blocks": summary["blocks_found"],
                    "before_ms": before_ms,
                    "after_ms": after_ms,
                    "speedup": speedup,
                }
            )
            print(f"  {label}, {rows[-1]['export']}: {speedup:.2f}x", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| block | export | nodes file / canonical / fused | blocks | file ms | fused ms "
        "| speedup |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        blocks = ", ".join(f"{k}: {v}" for k, v in r["blocks"].items()) or "none"  # type: ignore[attr-defined]
        lines.append(
            f"| {r['block']} | {r['export']} | {r['nodes']} | {blocks} | {r['before_ms']:.3f} "
            f"| {r['after_ms']:.3f} | {r['speedup']:.2f}x |"
        )
    met = all(
        r["blocks"] == {"sase": 1} and float(r["speedup"]) >= TARGET_SPEEDUP  # type: ignore[arg-type]
        for r in rows
    )
    lines += [
        "",
        f"Target: every export fuses to one SASE block and runs >= {TARGET_SPEEDUP}x faster "
        f"on ORT CPU: {'met' if met else 'MISSED'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="Interleaved pairs (minimum).")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads.")
    parser.add_argument("--out", default=None, help="Also write the table to this .md file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = markdown(measure(args.runs, args.threads, Path(tmp)))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
