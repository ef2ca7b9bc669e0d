"""Accuracy cost of a precision change, measured on ORT CPU, and `--auto-keep` layer selection.

Metrics (vs the FP32 model on the same feeds):
- classification: top-1 accuracy in percent when labels are known (`.npz` with `y`), else top-1
  agreement with FP32; the cost is the drop in points;
- generation: PSNR in dB of the first output against FP32 (peak = FP32's value range); the cost
  is measured against a minimum PSNR.

Both come from `sase_deploy.runtime.compare`, the report's own definitions: a sample whose logits
hold NaN/Inf predicts no class, and outputs with NaN/Inf score -inf dB (the report shows null).

`auto_keep` measures each candidate node's effect alone (only that node lowered), ranks them and
greedily keeps the most harmful in higher precision until the whole model meets the tolerance.
ORT's `qdq_loss_debug` compares activations tensor by tensor but not end-task metrics per layer,
so this search is written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from sase_deploy.calibration.sources import CalibrationSource
from sase_deploy.console import progress
from sase_deploy.runtime.compare import data_range, psnr, top1, top1_agreement
from sase_deploy.runtime.ort import OrtRunner
from sase_deploy.runtime.per_layer import layer_errors
from sase_deploy.vocabulary import Task


@dataclass
class Evaluator:
    """Feeds, their FP32 outputs and the task metric. `score` is higher-is-better."""

    feeds: list[dict[str, np.ndarray]]
    task: Task
    labels: np.ndarray | None = None
    reference: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_source(
        cls,
        fp32: onnx.ModelProto,
        source: CalibrationSource,
        task: Task,
        samples: int,
        batch_size: int = 32,
    ) -> Evaluator:
        feeds, seen = [], 0
        for feed in source.batches(batch_size):
            feeds.append(feed)
            seen += len(next(iter(feed.values())))
            if seen >= samples:
                break
        labels = source.labels()
        if labels is not None:
            labels = np.asarray(labels)[:seen]
        evaluator = cls(feeds, task, labels if task == "classification" else None)
        evaluator.reference = evaluator.outputs(fp32)
        return evaluator

    def outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        runner = OrtRunner(model)
        with runner:
            first = runner.output_names[0]
            return [runner.infer(feed)[first] for feed in self.feeds]

    def score(self, model: onnx.ModelProto) -> float:
        got = np.concatenate(self.outputs(model))
        ref = np.concatenate(self.reference)
        if self.task == "generation":
            value = psnr(ref, got, data_range(ref))
            return -math.inf if value is None else value  # NaN/Inf outputs: the worst score
        if self.labels is not None:
            return 100.0 * float(np.mean(top1(got) == self.labels))
        return 100.0 * top1_agreement(ref, got)

    def baseline(self) -> float:
        """The FP32 model's own score (accuracy, 100 % agreement, or infinite PSNR)."""
        if self.task == "generation":
            return math.inf
        if self.labels is None:
            return 100.0
        expected = np.concatenate([r.reshape(len(r), -1).argmax(1) for r in self.reference])
        return 100.0 * float(np.mean(expected == self.labels))

    def meets(self, score: float, tolerance: float) -> bool:
        """Classification: drop <= tolerance points; generation: PSNR >= tolerance dB."""
        if self.task == "generation":
            return score >= tolerance
        return self.baseline() - score <= tolerance + 1e-9

    def to_dict(self) -> dict[str, Any]:
        metric = {
            "generation": "psnr_db_vs_fp32",
            "classification": "top1_accuracy_pct"
            if self.labels is not None
            else "top1_agreement_pct",
        }[self.task]
        return {"metric": metric, "samples": int(sum(len(r) for r in self.reference))}


@dataclass
class AutoKeepResult:
    tolerance: float
    metric: str
    baseline: float
    all_lowered: float
    final: float
    met: bool
    kept: list[str]
    per_node: dict[str, float]  # score with only that node lowered

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else round(v, 4)

        return {
            "tolerance": self.tolerance,
            "metric": self.metric,
            "baseline": clean(self.baseline),
            "all_lowered": clean(self.all_lowered),
            "final": clean(self.final),
            "met": self.met,
            "kept": self.kept,
            "per_node": {k: clean(v) for k, v in self.per_node.items()},
        }


def auto_keep(
    candidates: Iterable[str],
    build: Callable[[set[str]], onnx.ModelProto],
    evaluator: Evaluator,
    tolerance: float,
    ranking: Callable[[list[str], onnx.ModelProto], list[str]] | None = None,
) -> AutoKeepResult:
    """Fewest candidates to keep in high precision so that `build(lowered)` meets `tolerance`.

    `build(lowered)` returns the model with exactly the nodes in `lowered` at low precision.
    `ranking(nodes, all_lowered)` orders the nodes most harmful first in one go from the model
    with all of them lowered (`per_layer_ranking`); without it each node is scored lowered alone
    (`per_node`), one evaluation per node.
    """
    nodes = sorted(set(candidates))
    baseline = evaluator.baseline()
    all_lowered = build(set(nodes))
    everything = evaluator.score(all_lowered)
    per_node: dict[str, float] = {}
    kept: list[str] = []
    final = everything
    if not evaluator.meets(everything, tolerance):
        if ranking is not None:
            ranked = ranking(nodes, all_lowered)
        else:
            with progress() as bar:
                task = bar.add_task("sensitivity", total=len(nodes))
                for node in nodes:
                    per_node[node] = evaluator.score(build({node}))
                    bar.advance(task)
            # most harmful first: lowest score when lowered alone
            ranked = sorted(nodes, key=lambda n: (per_node[n], n))
        for count in range(1, len(ranked) + 1):
            kept = ranked[:count]
            final = evaluator.score(build(set(nodes) - set(kept)))
            if evaluator.meets(final, tolerance):
                break
    return AutoKeepResult(
        tolerance=tolerance,
        metric=evaluator.to_dict()["metric"],
        baseline=baseline,
        all_lowered=everything,
        final=final,
        met=evaluator.meets(final, tolerance),
        kept=kept,
        per_node=per_node,
    )


def per_layer_ranking(
    fp32: onnx.ModelProto, feed: dict[str, np.ndarray]
) -> Callable[[list[str], onnx.ModelProto], list[str]]:
    """An `auto_keep` ranking from one per-layer comparison (`runtime.per_layer`) of the model
    with every candidate lowered against FP32: a node ranks by the error its output adds (its
    jump; a non-finite one first), so the search needs no evaluation per node.

    Args:
        fp32: the float model (node names as the candidates').
        feed: one batch of inputs.
    """
    output = {node.name: node.output[0] for node in fp32.graph.node if node.output}

    def rank(nodes: list[str], lowered: onnx.ModelProto) -> list[str]:
        jump = {layer.tensor: layer.jump for layer in layer_errors(fp32, lowered, feed).layers}

        def harm(name: str) -> float:
            value = jump.get(output.get(name, ""), 0.0)
            return math.inf if not math.isfinite(value) else value

        return sorted(nodes, key=lambda n: (-harm(n), n))

    return rank
