"""`deploy`: one model from checkpoint to engines and a parity report, stage by stage.

    OUT/export/NAME.onnx            fused FP32 export (+ NAME.fp16.onnx)
    OUT/calibration/                INT8 ranges, Q/DQ model, TensorRT-10 cache
    OUT/engines/<target>/           engines or bundles per precision (`sase-deploy build`)
    OUT/report.{json,md,html}       `compare` of every artifact against PyTorch
    OUT/triton/                     with --triton: a Triton model repository

Each stage is the library function its own command runs; `DeployState` skips a stage whose
inputs are unchanged, so re-running (or resuming after a kill) redoes only what changed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sase_deploy._timing import QUIET, StageProgress
from sase_deploy.artifacts import artifact_path, calibration_path, model_stem
from sase_deploy.deploy.state import SKIPPED, DeployState, file_digest
from sase_deploy.errors import UserError
from sase_deploy.models.spec import ModelOptions
from sase_deploy.report.api import CompareOptions
from sase_deploy.vocabulary import PRECISIONS, Precision

DEFAULT_TARGET = "rtx"
REPORT_FORMATS = ("json", "md", "html")
TRITON_RTX = (
    "TensorRT-RTX engines, which stock Triton's tensorrt_plan backend cannot load (the ONNX "
    "models are served instead)"
)
TRITON_BUNDLE = "bundles build their engine on the device; add that engine to the repository there"


@dataclass
class DeployRequest:
    """One model through the whole flow.

    model: registry name, `module:factory` or TorchScript file. model_options: weights
    (default: the ones a registered model ships, else random init or what a factory loads),
    factory arguments, input shapes and names (needed for a model the registry does not
    describe), as `export` takes them. dynamic_batch: export with a symbolic batch (None: when
    the model allows it). targets: target names (empty: an engine for `rtx` when TensorRT-RTX
    is installed, ONNX Runtime CPU models always). precisions: of fp32, fp16, int8. data:
    calibration data (as for `calibrate --data`; default: the model's own, else random
    inputs). eval_data: comparison inputs (default: the model's own, else `data`). preprocess:
    image-folder preprocessing overrides (as `calibrate --size/--mean/...`). compare:
    latency/tolerance options. triton: also write a Triton repository.
    """

    model: str
    output: Path
    model_options: ModelOptions = field(default_factory=ModelOptions)
    dynamic_batch: bool | None = None
    targets: tuple[str, ...] = ()
    precisions: tuple[Precision, ...] = PRECISIONS
    data: str | None = None
    eval_data: str | None = None
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    compare: CompareOptions = field(default_factory=CompareOptions)
    triton: bool = False


@dataclass
class DeployResult:
    """Where everything went; `report` is the parity report document."""

    output: Path
    report: dict[str, Any]
    reports: list[Path]
    stages: list[dict[str, Any]]
    notes: list[str]
    build_failures: list[str]
    triton: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "reports": [str(p) for p in self.reports],
            "stages": self.stages,
            "notes": self.notes,
            "build_failures": self.build_failures,
            "triton": str(self.triton) if self.triton else None,
        }


@dataclass
class _Run:
    """What one deploy has done so far."""

    request: DeployRequest
    state: DeployState
    progress: StageProgress = QUIET
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(
        self, name: str, facts: dict[str, Any], produce: Callable[[], Sequence[Path]]
    ) -> list[Path]:
        """Stage `name`: `produce` its outputs unless `DeployState` finds them fresh."""
        self.progress.stage(name)
        start = time.perf_counter()
        outputs, skipped = self.state.run(name, facts, produce)
        self.finished(name, start, outputs, skipped)
        return outputs

    def finished(
        self, name: str, start: float, outputs: Sequence[Path], skipped: bool, **extra: Any
    ) -> None:
        """Close stage `name` (begun at `start`) and list it, outputs relative to OUT."""
        reason = SKIPPED if skipped else None
        self.progress.done(reason)
        self.stages.append(
            {"stage": name, "skipped": skipped, "reason": reason,
             "seconds": round(time.perf_counter() - start, 3),
             "outputs": [self.state.relative(p) for p in outputs], **extra}
        )  # fmt: skip


def _validate(request: DeployRequest) -> None:
    bad = [p for p in request.precisions if p not in PRECISIONS]
    if bad or not request.precisions:
        raise UserError(
            f"--precisions {','.join(request.precisions)}: choose from {', '.join(PRECISIONS)}"
        )
    from sase_deploy.engines.targets import get_target

    for name in request.targets:
        get_target(name)  # UserError naming the known targets
    checkpoint = request.model_options.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        what = "is a folder" if Path(checkpoint).is_dir() else "does not exist"
        raise UserError(f"checkpoint {checkpoint} {what}; give the path of the weights file")


def _model_name(request: DeployRequest) -> tuple[str, Any]:
    from sase_deploy.export.api import default_output
    from sase_deploy.models.source import resolve_model

    given = request.model_options
    source = resolve_model(
        request.model,
        model_args=given.model_args,
        input_shapes=given.input_shapes or None,
        input_names=given.input_names or None,
    )
    stem = source.spec.name if source.spec is not None else default_output(request.model).stem
    return stem, source


def _export(run: _Run, name: str, source: Any) -> Path:
    from sase_deploy.export.api import export_model, export_options
    from sase_deploy.report.reference import default_checkpoint

    request = run.request
    given = request.model_options
    checkpoint = given.checkpoint or default_checkpoint(source.spec.name if source.spec else None)
    dest = request.output / "export" / f"{name}.onnx"
    dynamic = _dynamic_batch(request, source)
    options = export_options(given, checkpoint=checkpoint, dynamic_batch=dynamic)
    facts = {
        # a TorchScript file's path depends on the working directory; its content is `source`
        "model": Path(request.model).name if source.kind == "torchscript" else request.model,
        "options": {**dataclasses.asdict(options), "checkpoint": None},
        "checkpoint": file_digest(checkpoint) if checkpoint else None,
        # a factory's code or a TorchScript file may change under the same MODEL string
        "source": _source_digest(source),
    }

    def produce() -> list[Path]:
        result = export_model(request.model, dest, options)
        return [result.onnx_path, result.manifest_path]

    return run.step("export", facts, produce)[0]


def _dynamic_batch(request: DeployRequest, source: Any) -> bool:
    """--dynamic-batch / --static-batch as given, else dynamic when the model allows it."""
    allowed = bool(source.dynamic_batch_allowed)
    if request.dynamic_batch and not allowed:
        raise UserError(
            f"{request.model} cannot be exported with a dynamic batch (its registry entry says "
            "so); drop --dynamic-batch"
        )
    return allowed if request.dynamic_batch is None else request.dynamic_batch


def _source_digest(source: Any) -> str | None:
    """sha256 of the file MODEL's code or archive lives in (factory module, TorchScript file):
    the export re-runs when it changes. None for registered models (the version covers them)."""
    import inspect
    import sys

    if source.kind == "torchscript":
        return file_digest(Path(source.reference))
    if source.kind == "factory":
        module = sys.modules.get(source.reference.partition(":")[0])
        path = inspect.getsourcefile(module) if module is not None else None
        return file_digest(Path(path)) if path else None
    return None


def _fp16(run: _Run, export: Path, calibration: Path | None) -> Path:
    """The FP16 model; with INT8 ranges (`calibration`) their overflow rule applies, as when
    `build` converts for an engine, so the engines' FP16 graph is this same file (shared)."""
    from sase_deploy.calibration.api import convert_onnx

    stem = model_stem(export)
    dest = artifact_path(export.parent, stem, "fp16", ".onnx")
    calib_json = calibration_path(calibration, stem, "calib.json") if calibration else None
    facts = {"onnx": file_digest(export), "calib_json": file_digest(calib_json)}

    def produce() -> list[Path]:
        return [convert_onnx(export, dest, precision="fp16", calib_json=calib_json).output]

    return run.step("fp16", facts, produce)[0]


RANDOM_CALIBRATION_NOTE = (
    "int8 calibrated on random inputs (no --data): accuracy is not judged; pass --data "
    "(.npz/.npy or an image folder) with real inputs"
)


def _calibration_data(run: _Run, spec: Any, task: str) -> str:
    """`--data`, else the model's own calibration split (written from the package's data), else
    seeded latents: a generator's own inputs, random inputs (with a note) for anything else."""
    if run.request.data is not None:
        return run.request.data
    if spec is not None and spec.write_data is not None:
        path = run.request.output / "calibration" / f"{spec.name}.calibration-data.npz"
        if not path.is_file():
            spec.write_data(path, "calibration")
        return str(path)
    if task != "generation":
        run.notes.append(RANDOM_CALIBRATION_NOTE)
    return "latent"


def _int8_data(run: _Run, spec: Any, task: str) -> str:
    """The calibration data for INT8, checked before any work."""
    data = _calibration_data(run, spec, task)
    if not data.startswith("latent") and not Path(data).exists():
        raise UserError(f"--data {data} does not exist; give a folder, .npy/.npz or 'latent'")
    return data


def _data_key(data: str) -> str | None:
    """What identifies calibration data in a stage key: a file by its content, a folder by its
    absolute path (the same wherever deploy runs from), `latent[:SEED]` as written."""
    path = Path(data)
    if path.is_file():
        return file_digest(path)
    return str(path.resolve()) if path.is_dir() else data


def _int8(run: _Run, export: Path, data: str) -> Path:
    from sase_deploy.calibration.api import calibrate_onnx

    folder = run.request.output / "calibration"
    facts = {
        "onnx": file_digest(export),
        "data": _data_key(data),
        "preprocess": dict(run.request.preprocess),
    }

    def produce() -> list[Path]:
        result = calibrate_onnx(
            export, data, folder, preprocess=run.request.preprocess, progress=run.progress
        )
        run.notes.extend(result.notes)
        return [result.int8_onnx, result.cache, result.json]

    return run.step("calibrate", facts, produce)[0]


def _default_targets(run: _Run) -> tuple[str, ...]:
    """`rtx` when TensorRT-RTX is installed (it builds without a GPU), else none, with a note."""
    from sase_deploy.engines.flavours import find_flavour

    if run.request.targets:
        return run.request.targets
    if find_flavour("tensorrt-rtx").installed:
        run.notes.append(
            "engines: one TensorRT-RTX engine per precision for 'rtx' (runs on Ampere-and-later "
            "GPUs); pass --targets for others (see 'sase-deploy targets')"
        )
        return (DEFAULT_TARGET,)
    run.notes.append(
        "engines skipped: TensorRT-RTX is not installed (pip install 'sase-deploy[trt-rtx]'); "
        "the report covers ONNX Runtime"
    )
    return ()


def _engines(
    run: _Run, export: Path, calibration: Path | None, targets: Sequence[str]
) -> tuple[list[Path], list[str]]:
    """Build every target x precision; a rejected build is noted and the rest go on."""
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest

    artifacts, failures = [], []
    for target in targets:
        for precision in run.request.precisions:
            if precision == "int8" and calibration is None:
                continue
            stage = f"build {target} {precision}"
            run.progress.stage(stage)
            start = time.perf_counter()
            request = BuildRequest(
                onnx=export,
                target=target,
                output_dir=run.request.output / "engines",
                precision=precision,
                calibration=calibration,
            )
            try:
                result = build(request)
            except UserError as exc:
                failures.append(f"{target} {precision}: {exc}")
                run.progress.done("build failed")
                continue
            run.finished(stage, start, [result.artifact], result.cached, backend=result.backend)
            artifacts.append(result.artifact)
    return artifacts, failures


def _compare(run: _Run, artifacts: Sequence[Path], task: str) -> tuple[dict[str, Any], list[Path]]:
    from dataclasses import replace

    from sase_deploy.report.api import compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.output import write_reports
    from sase_deploy.report.reference import load_reference, shipped_data

    request = run.request
    run.progress.stage("load reference")
    reference = load_reference(request.model, request.model_options)
    run.progress.done()
    eval_data = request.eval_data
    own_data = shipped_data(reference.model_name) is not None
    if eval_data is None and not own_data and task != "generation" and request.data:
        eval_data = request.data
        run.notes.append("compared on the calibration data (--data); pass --eval-data for held-out")
    # a failing candidate's report says where its error comes from (the fused FP32 ONNX is
    # always a candidate to compare its layers with)
    options = replace(
        request.compare, data=eval_data, preprocess=request.preprocess, per_layer="failing"
    )
    doc = compare(reference, resolve_candidates(artifacts), options, progress=run.progress)
    doc["notes"] = list(run.notes)
    for row in doc["candidates"]:  # the report lives in OUT: paths relative to it
        row["path"] = os.path.relpath(row["path"], request.output)
    paths = [request.output / f"report.{fmt}" for fmt in REPORT_FORMATS]
    return doc, write_reports(doc, paths)


def _triton(run: _Run, artifacts: Sequence[Path]) -> Path:
    """A repository of what stock Triton can load: ONNX models and TensorRT engines. TensorRT-RTX
    engines and Jetson bundles are left out, with a note saying so and why."""
    from sase_deploy.serving.triton import triton_model_from, write_triton_repository

    run.progress.stage("triton")
    repo = run.request.output / "triton"
    models, rtx, bundles = [], [], []
    for path in artifacts:
        if path.suffix not in (".onnx", ".engine", ".plan"):
            bundles.append(f"{path.parent.name}/{path.name}")
            continue
        model = triton_model_from(path)
        if model.engine_backend == "tensorrt-rtx":
            rtx.append(f"{path.parent.name}/{path.name}")
            continue
        models.append(model)
    write_triton_repository(models, repo)
    run.notes.append(f"triton: wrote {repo} ({', '.join(m.name for m in models)})")
    if rtx:
        run.notes.append(f"triton: left out {', '.join(rtx)}: {TRITON_RTX}")
    if bundles:
        run.notes.append(f"triton: left out {', '.join(bundles)}: {TRITON_BUNDLE}")
    run.progress.done()
    return repo


def deploy(request: DeployRequest, progress: StageProgress | None = None) -> DeployResult:
    """Export, convert, calibrate, build, compare (and write a Triton repository) for one model.

    Args:
        request: what to deploy and where (see `DeployRequest`).
        progress: told as each stage starts and ends (skipped or not), with counts where a
            stage knows them (`sase_deploy.console.stage_progress`); default: quiet.

    Raises UserError for bad input; the report's verdict says whether parity held.
    """
    _validate(request)
    name, source = _model_name(request)
    task = source.spec.task if source.spec is not None else "other"
    run = _Run(request, DeployState(request.output), progress or QUIET)
    data = _int8_data(run, source.spec, task) if "int8" in request.precisions else None
    export = _export(run, name, source)
    int8 = _int8(run, export, data) if data is not None else None
    calibration = request.output / "calibration" if int8 is not None else None
    onnx_models = [export] if "fp32" in request.precisions else []
    if "fp16" in request.precisions:
        onnx_models.append(_fp16(run, export, calibration))
    onnx_models += [int8] if int8 is not None else []
    engines, failures = _engines(run, export, calibration, _default_targets(run))
    triton = _triton(run, [*onnx_models, *engines]) if request.triton else None
    doc, reports = _compare(run, [*onnx_models, *engines], task)
    return DeployResult(request.output, doc, reports, run.stages, run.notes, failures, triton)
