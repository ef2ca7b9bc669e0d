"""What one `sase-deploy build` call asks for.

Its own module, below `build.py`, `cache.py` and `precision.py`: all three read a request, and
`build.py` imports the other two, so the request cannot live in `build.py` without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sase_deploy.vocabulary import Backend, Precision


@dataclass(frozen=True)
class BuildRequest:
    """One `sase-deploy build` call.

    onnx: the input model (FP32 export, or already FP16 / INT8). target: a target name
    (`sase-deploy targets`). precision: fp32 | fp16 | int8. output_dir: artifacts go to
    `output_dir/<target>/`. calibration: a `calibrate` output folder (INT8 ranges); data: a
    calibration source (as for `calibrate --data`) used when no folder is given. batch:
    (min, opt, max) of a dynamic batch dim. workspace_mb: builder workspace (default: the
    target's). timing_cache: TensorRT timing cache file. backend: one of BACKENDS.
    dla_core: build for this DLA core (Jetson). samples: calibration samples for `data`.
    """

    onnx: Path
    target: str
    output_dir: Path
    precision: Precision = "fp32"
    calibration: Path | None = None
    data: str | None = None
    batch: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    backend: Backend = "auto"
    dla_core: int | None = None
    samples: int = 512
