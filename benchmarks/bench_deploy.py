"""Time `sase-deploy deploy` end to end: from nothing, then re-run (every stage skipped).

    python benchmarks/bench_deploy.py [--models sase_resnet_digits,se_resnet_digits] [--out DIR]

Prints a Markdown table: wall time of the first and second run, the verdict, and per candidate
precision the worst relative error and the task metric. Each deploy runs in its own process (as
a user would run it), so import and start-up time is included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = "sase_resnet_digits,se_resnet_digits,fastgan_slim_256:fp32+fp16"


def _deploy(model: str, precisions: str | None, out: Path) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "sase_deploy.cli", "deploy", model, "-o", str(out), "--json"]
    if precisions:
        argv += ["--precisions", precisions]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"deploy {model} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)


def _metric(row: dict) -> str:
    met = row["metrics"]
    if "top1_agreement" in met:
        acc = met.get("accuracy")
        return f"top-1 {met['top1_agreement']:.1%}" + (
            f", acc {acc:.2%}" if acc is not None else ""
        )
    if met.get("psnr_db") is not None:
        return f"PSNR {met['psnr_db']:.1f} dB"
    return row["reason"] or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="NAME[:p1+p2],...")
    parser.add_argument("--out", type=Path, help="Keep the outputs here (default: a temp dir).")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    print("| model | first run s | re-run s | verdict | candidate | precision | rel err | result |")
    print("|---|---|---|---|---|---|---|---|")
    for item in args.models.split(","):
        model, _, precisions = item.partition(":")
        out = root / model
        first, _ = _deploy(model, precisions.replace("+", ",") or None, out)
        again, result = _deploy(model, precisions.replace("+", ",") or None, out)
        assert all(s["skipped"] for s in result["models"][0]["stages"]), "re-run redid a stage"
        doc = json.loads((out / "report.json").read_text())
        for index, row in enumerate(doc["candidates"]):
            rel = max((o["rel_max_abs"] or float("inf") for o in row["outputs"]), default=None)
            head = (
                f"| {model} | {first:.1f} | {again:.1f} | {doc['verdict']}"
                if index == 0
                else "| | | |"
            )
            rel_text = f"{rel:.2e}" if rel is not None else "—"
            print(f"{head} | {row['name']} | {row['precision']} | {rel_text} | {_metric(row)} |")


if __name__ == "__main__":
    main()
