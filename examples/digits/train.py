"""Train the two digits networks and write their checkpoints and metrics next to this file.

    python examples/digits/train.py            # ~30 s on one CPU core

One intra-op thread by default: the tensors are tiny, and on a shared machine extra OpenMP
threads spin-wait for busy cores (measured 20x slower per step with 2 threads under load).

Writes `se_resnet_digits.pt`, `sase_resnet_digits.pt` (plain state dicts) and `metrics.json`.
All logic lives in `sase_deploy.models.digits_data` / `sase_deploy.models.digits`.
"""

from __future__ import annotations

import argparse
import io
import platform
from pathlib import Path

import torch

from sase_deploy._io import write_bytes_atomic, write_json_atomic
from sase_deploy.models.digits import sase_resnet_digits, se_resnet_digits
from sase_deploy.models.digits_data import (
    SPLIT_SEED,
    TEST_FRACTION,
    evaluate_accuracy,
    load_digits_split,
    torch_predict_fn,
    train_classifier,
)

MODELS = {"se_resnet_digits": se_resnet_digits, "sase_resnet_digits": sase_resnet_digits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    split = load_digits_split(SPLIT_SEED)
    metrics: dict[str, object] = {
        "dataset": "sklearn.datasets.load_digits (8x8, 10 classes)",
        "split": {
            "test_fraction": TEST_FRACTION,
            "stratified": True,
            "random_state": SPLIT_SEED,
            "train": len(split.y_train),
            "test": len(split.y_test),
        },
        "normalisation": {"mean": split.mean, "std": split.std},
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "models": {},
    }
    for name, factory in MODELS.items():
        result = train_classifier(factory, split, epochs=args.epochs, seed=args.seed)
        accuracy = evaluate_accuracy(torch_predict_fn(result.model), split.x_test, split.y_test)
        buffer = io.BytesIO()
        torch.save(result.model.state_dict(), buffer)
        path = write_bytes_atomic(args.out / f"{name}.pt", buffer.getvalue())
        metrics["models"][name] = {  # type: ignore[index]
            "test_accuracy": accuracy,
            "train_seconds": round(result.train_seconds, 2),
            "final_train_loss": round(result.final_loss, 5),
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "checkpoint": path.name,
            "checkpoint_bytes": path.stat().st_size,
        }
        print(f"{name}: test accuracy {accuracy:.4f} in {result.train_seconds:.1f} s -> {path}")
    write_json_atomic(args.out / "metrics.json", metrics)


if __name__ == "__main__":
    main()
