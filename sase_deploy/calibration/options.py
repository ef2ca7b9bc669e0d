"""Typed options of the precision stage: what `calibrate_onnx` (INT8) and `convert_onnx`
(FP16) share, and what each adds. The CLI builds these from its flags
(`commands/_precision_options.py`); Python callers pass them or keyword overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sase_deploy.calibration import trt_cache
from sase_deploy.calibration.fp16 import DEFAULT_REDUCE_LIMIT
from sase_deploy.errors import UserError


@dataclass(frozen=True, kw_only=True)
class PrecisionOptions:
    """What `calibrate_onnx` and `convert_onnx` share: which samples, prepared how, and the
    `--auto-keep` search.

    Attributes:
        samples: how many samples to read from the data (None: all of them).
        model_name: registry model whose preprocessing and task apply (default: the one named
            by the export manifest beside the model, if any).
        preprocess: `Preprocess` fields set over the registry's (None values are ignored).
        seed: seed of generated latents.
        auto_keep_tolerance: keep the fewest nodes in higher precision to meet this: max top-1
            drop in points (classification) or min PSNR in dB (generators). None: no search.
        eval_samples: samples the `--auto-keep` search scores on.
    """

    samples: int | None = None
    model_name: str | None = None
    preprocess: Mapping[str, Any] | None = None
    seed: int = 0
    auto_keep_tolerance: float | None = None
    eval_samples: int = 256


# what INT8 models compute where they are not quantised
HIGH_PRECISIONS = ("fp16", "fp32")
# how --auto-keep finds the most harmful layers
AUTO_KEEP_RANKS = ("sensitivity", "per-layer")


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions(PrecisionOptions):
    """`calibrate_onnx`'s options: `PrecisionOptions` (512 samples by default) plus these.

    Attributes:
        method: "percentile", "entropy" or "minmax" ranges.
        batch: samples per ORT run (default 16; a fixed-batch model always runs at its own).
        percentile: for `method="percentile"`, in (0, 100].
        quantize_gates: quantise SE gate paths too (kept float by default).
        trt_version: TensorRT version named in the cache header.
        high_precision: what the layers left unquantised compute in: "fp16" (default: Q/DQ
            scales and every float node in FP16 except `fp16_keep_list`'s, float32 I/O; opset
            19) or "fp32" (the float graph as it was).
        min_channels: leave Conv/Gemm/MatMul with fewer channels than this unquantised
            (`qdq.small_weighted_nodes`; 0: quantise every one).
        auto_keep_rank: how `--auto-keep` orders the layers, most harmful first:
            "sensitivity" (each scored quantised alone: one evaluation per layer) or
            "per-layer" (the error each layer's output adds, from one run of the fully
            quantised model against FP32: `sensitivity.per_layer_ranking`).
    """

    samples: int | None = 512
    method: str = "percentile"
    batch: int | None = None
    percentile: float = 99.99
    quantize_gates: bool = False
    trt_version: str = trt_cache.DEFAULT_TRT_VERSION
    high_precision: str = "fp16"
    min_channels: int = 0
    auto_keep_rank: str = "sensitivity"

    def validate(self) -> None:
        """Raise `UserError` for a value calibration cannot use, before any work."""
        if (self.batch is not None and self.batch < 1) or (
            self.samples is not None and self.samples < 1
        ):
            raise UserError("--batch and --samples must be positive integers")
        if self.method == "percentile" and not 0 < self.percentile <= 100:
            raise UserError(
                f"--percentile {self.percentile:g}: give a value in (0, 100], e.g. 99.99"
            )
        trt_cache.trt_version_code(self.trt_version)
        if self.min_channels < 0:
            raise UserError(f"--min-channels {self.min_channels}: give 0 or a positive count")
        if self.auto_keep_rank not in AUTO_KEEP_RANKS:
            raise UserError(
                f"--auto-keep-rank {self.auto_keep_rank}: choose {' or '.join(AUTO_KEEP_RANKS)}"
            )
        if self.high_precision not in HIGH_PRECISIONS:
            raise UserError(
                f"--high-precision {self.high_precision}: choose {' or '.join(HIGH_PRECISIONS)}"
            )


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(PrecisionOptions):
    """`convert_onnx`'s options: `PrecisionOptions` (256 samples by default) plus these.

    Attributes:
        precision: only "fp16" (INT8 is `calibrate_onnx`).
        reduce_limit: keep in FP32 reductions over more elements than this.
        calib_json: a `NAME.calib.json` whose ranges decide the overflow rule.
        data: calibration data for a min/max pass (when no `calib_json`) and `--auto-keep`.
    """

    samples: int | None = 256
    precision: str = "fp16"
    reduce_limit: int = DEFAULT_REDUCE_LIMIT
    calib_json: str | Path | None = None
    data: str | None = None

    def validate(self) -> None:
        """Raise `UserError` for a precision this cannot convert to."""
        if self.precision != "fp16":
            raise UserError(
                f"precision '{self.precision}' is not convertible; use fp16 (INT8: calibrate)"
            )
