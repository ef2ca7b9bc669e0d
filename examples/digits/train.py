"""Train the two digits networks and write their checkpoints and metrics into the package data.

    python examples/digits/train.py                 # ~30 s on one CPU core
    python examples/digits/train.py --rebuild-data  # first rebuild digits.npz from scikit-learn
    python examples/digits/train.py --data-only     # only rebuild digits.npz (no training)

One intra-op thread by default: the tensors are tiny, and on a shared machine extra OpenMP
threads spin-wait for busy cores (measured 20x slower per step with 2 threads under load).

Writes `se_resnet_digits.pt`, `sase_resnet_digits.pt` (plain state dicts) and `metrics.json` to
`sase_deploy/assets/digits/` (package data, shipped in the wheel; `--out` to write elsewhere).
Training reads the packaged `digits.npz` (raw images, labels, fixed split); `--rebuild-data`
regenerates it from scikit-learn's `load_digits` (needs the `dev` extra) before training.
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
    ASSETS_SUBDIR,
    DATA_FILE,
    SPLIT_SEED,
    TEST_FRACTION,
    evaluate_accuracy,
    load_digits_split,
    save_digits_data,
    sklearn_digits_arrays,
    torch_predict_fn,
    train_classifier,
)

MODELS = {"se_resnet_digits": se_resnet_digits, "sase_resnet_digits": sase_resnet_digits}
# The package-data folder of this source tree (not of whatever sase_deploy is installed).
ASSETS_DIR = Path(__file__).resolve().parents[2].joinpath("sase_deploy", *ASSETS_SUBDIR)


def rebuild_data(out: Path) -> Path:
    """Write `digits.npz` from scikit-learn's `load_digits` and the fixed stratified split."""
    path = save_digits_data(out / DATA_FILE, sklearn_digits_arrays(SPLIT_SEED, TEST_FRACTION))
    print(f"digits data: {path} ({path.stat().st_size} bytes)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rebuild-data",
        action="store_true",
        help=f"rebuild {DATA_FILE} from scikit-learn into --out before training",
    )
    parser.add_argument(
        "--data-only", action="store_true", help=f"only rebuild {DATA_FILE}; do not train"
    )
    args = parser.parse_args()

    if args.rebuild_data or args.data_only:
        rebuild_data(args.out)
        if args.data_only:
            return
        if args.out.resolve() != ASSETS_DIR:
            print(f"note: training reads the packaged {DATA_FILE}, not the one in --out")

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
