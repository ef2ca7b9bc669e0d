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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sase_deploy.deploy.state import DeployState, file_digest
from sase_deploy.errors import UserError
from sase_deploy.report.api import CompareOptions

Stage = Callable[[str], None]
DEFAULT_TARGET = "rtx"
PRECISIONS = ("fp32", "fp16", "int8")
REPORT_FORMATS = ("json", "md", "html")


@dataclass
class DeployRequest:
    """One model through the whole flow.

    model: registry name, `module:factory` or TorchScript file. checkpoint: weights (default:
    the ones a registered model ships, else random init). targets: target names (empty: an
    engine for `rtx` when TensorRT-RTX is installed, ONNX Runtime CPU models always).
    precisions: of fp32, fp16, int8. data: calibration data (as for `calibrate --data`; default:
    the model's own). eval_data: comparison inputs (default: the model's own, else `data`).
    compare: latency/tolerance options. triton: also write a Triton repository.
    """

    model: str
    output: Path
    checkpoint: Path | None = None
    unsafe_load: bool = False
    model_args: Mapping[str, Any] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    precisions: tuple[str, ...] = PRECISIONS
    precisions_given: bool = False
    data: str | None = None
    eval_data: str | None = None
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
    stage: Stage
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(
        self, name: str, facts: dict[str, Any], produce: Callable[[], Sequence[Path]]
    ) -> list[Path]:
        self.stage(name)
        outputs, skipped = self.state.run(name, facts, produce)
        self.stages.append(
            {"stage": name, "skipped": skipped, "outputs": [str(p) for p in outputs]}
        )
        return outputs


def _validate(request: DeployRequest) -> None:
    bad = [p for p in request.precisions if p not in PRECISIONS]
    if bad or not request.precisions:
        raise UserError(
            f"--precisions {','.join(request.precisions)}: choose from {', '.join(PRECISIONS)}"
        )
    from sase_deploy.engines.targets import get_target

    for name in request.targets:
        get_target(name)  # UserError naming the known targets
    checkpoint = request.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        what = "is a folder" if Path(checkpoint).is_dir() else "does not exist"
        raise UserError(f"checkpoint {checkpoint} {what}; give the path of the weights file")


def _model_name(request: DeployRequest) -> tuple[str, Any]:
    from sase_deploy.export.api import default_output
    from sase_deploy.export.source import resolve_model

    source = resolve_model(request.model, model_args=request.model_args)
    stem = source.spec.name if source.spec is not None else default_output(request.model).stem
    return stem, source


def _export(run: _Run, name: str, source: Any) -> Path:
    from sase_deploy.export.api import export_model
    from sase_deploy.report.reference import default_checkpoint

    request = run.request
    checkpoint = request.checkpoint or default_checkpoint(source.spec.name if source.spec else None)
    dest = request.output / "export" / f"{name}.onnx"
    facts = {
        "model": request.model,
        "model_args": dict(request.model_args),
        "checkpoint": file_digest(checkpoint) if checkpoint else None,
        "dynamic": source.dynamic_batch_allowed,
    }

    def produce() -> list[Path]:
        result = export_model(
            request.model,
            dest,
            checkpoint=checkpoint,
            unsafe_load=request.unsafe_load,
            model_args=request.model_args,
            dynamic_batch=source.dynamic_batch_allowed,
        )
        return [result.onnx_path, result.manifest_path]

    return run.step("export", facts, produce)[0]


def _fp16(run: _Run, export: Path) -> Path:
    from sase_deploy.calibration.api import convert_onnx

    dest = export.with_name(export.name[: -len(".onnx")] + ".fp16.onnx")
    facts = {"onnx": file_digest(export)}
    return run.step("fp16", facts, lambda: [convert_onnx(export, dest, precision="fp16").output])[0]


def _calibration_data(run: _Run, spec: Any, task: str) -> str | None:
    """`--data`, else the model's own calibration split (written from the package's data), else
    seeded latents for generators, else None."""
    if run.request.data is not None:
        return run.request.data
    if spec is not None and spec.write_data is not None:
        path = run.request.output / "calibration" / f"{spec.name}.calibration-data.npz"
        if not path.is_file():
            spec.write_data(path, "calibration")
        return str(path)
    return "latent" if task == "generation" else None


def _int8_data(run: _Run, name: str, spec: Any, task: str) -> str | None:
    """The calibration data for INT8, checked before any work; None (with a note) when the
    model has none and int8 was only a default."""
    data = _calibration_data(run, spec, task)
    if data is not None and not data.startswith("latent") and not Path(data).exists():
        raise UserError(f"--data {data} does not exist; give a folder, .npy/.npz or 'latent'")
    if data is None and run.request.precisions_given:
        raise UserError(
            f"INT8 needs calibration data for {name}: pass --data (image folder or .npz), "
            "or drop int8 from --precisions"
        )
    if data is None:
        run.notes.append("int8 skipped: no calibration data for this model (pass --data)")
    return data


def _int8(run: _Run, export: Path, data: str) -> Path:
    from sase_deploy.calibration.api import calibrate_onnx

    folder = run.request.output / "calibration"
    data_path = Path(data)
    facts = {
        "onnx": file_digest(export),
        "data": file_digest(data_path) if data_path.is_file() else data,
    }

    def produce() -> list[Path]:
        result = calibrate_onnx(export, data, folder)
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
    from sase_deploy.engines.build import BuildRequest, build

    artifacts, failures = [], []
    for target in targets:
        for precision in run.request.precisions:
            if precision == "int8" and calibration is None:
                continue
            run.stage(f"build {target} {precision}")
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
                continue
            run.stages.append(
                {"stage": f"build {target} {precision}", "skipped": result.cached,
                 "outputs": [str(result.artifact)], "backend": result.backend}
            )  # fmt: skip
            artifacts.append(result.artifact)
    return artifacts, failures


def _compare(run: _Run, artifacts: Sequence[Path], task: str) -> tuple[dict[str, Any], list[Path]]:
    from dataclasses import replace

    from sase_deploy.report.api import compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.output import write_reports
    from sase_deploy.report.reference import load_reference, shipped_data

    request = run.request
    run.stage("compare")
    reference = load_reference(
        request.model, request.checkpoint, unsafe_load=request.unsafe_load,
        model_args=request.model_args,
    )  # fmt: skip
    eval_data = request.eval_data
    own_data = shipped_data(reference.model_name) is not None
    if eval_data is None and not own_data and task != "generation" and request.data:
        eval_data = request.data
        run.notes.append("compared on the calibration data (--data); pass --eval-data for held-out")
    options = replace(request.compare, data=eval_data)
    doc = compare(reference, resolve_candidates(artifacts), options, on_stage=run.stage)
    doc["notes"] = list(run.notes)
    paths = [request.output / f"report.{fmt}" for fmt in REPORT_FORMATS]
    return doc, write_reports(doc, paths)


def _triton(run: _Run, artifacts: Sequence[Path]) -> Path:
    from sase_deploy.serving.triton import triton_model_from, write_triton_repository

    run.stage("triton")
    repo = run.request.output / "triton"
    models = [triton_model_from(p) for p in artifacts if p.suffix in (".onnx", ".engine", ".plan")]
    write_triton_repository(models, repo)
    return repo


def deploy(request: DeployRequest, on_stage: Stage | None = None) -> DeployResult:
    """Export, convert, calibrate, build, compare (and write a Triton repository) for one model.

    Args:
        request: what to deploy and where (see `DeployRequest`).
        on_stage: called with a short description before each stage.

    Raises UserError for bad input; the report's verdict says whether parity held.
    """
    _validate(request)
    name, source = _model_name(request)
    task = source.spec.task if source.spec is not None else "other"
    run = _Run(request, DeployState(request.output), on_stage or (lambda _s: None))
    data = _int8_data(run, name, source.spec, task) if "int8" in request.precisions else None
    export = _export(run, name, source)
    onnx_models = [export] if "fp32" in request.precisions else []
    if "fp16" in request.precisions:
        onnx_models.append(_fp16(run, export))
    calibration = None
    if data is not None:
        onnx_models.append(_int8(run, export, data))
        calibration = request.output / "calibration"
    engines, failures = _engines(run, export, calibration, _default_targets(run))
    doc, reports = _compare(run, [*onnx_models, *engines], task)
    triton = _triton(run, [*onnx_models, *engines]) if request.triton else None
    return DeployResult(request.output, doc, reports, run.stages, run.notes, failures, triton)
