"""`sase-deploy deploy`: checkpoint -> fused ONNX -> FP16/INT8 -> engines -> parity report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from sase_deploy.commands._model_options import model_options
from sase_deploy.commands._precision_options import image_options
from sase_deploy.commands.compare import compare_options, finish, report_options
from sase_deploy.console import emit_json, note, stage_progress
from sase_deploy.errors import ParityError, UserError
from sase_deploy.models.spec import ModelOptions


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else ()


def _requests(
    model: str | None, config: Path | None, output: Path | None, cli: dict[str, Any]
) -> list[Any]:
    """One DeployRequest per model: from MODEL and options, or from the TOML config (options
    given on the command line win over the file)."""
    from sase_deploy.deploy.api import DeployRequest
    from sase_deploy.deploy.config import load_config
    from sase_deploy.vocabulary import PRECISIONS

    if config is None:
        if model is None:
            raise UserError("give MODEL (e.g. sase_resnet_digits) or --config deploy.toml")
        if output is None:
            raise UserError("give -o OUT: the folder for export, engines and the report")
        entries: list[dict[str, Any]] = [{"name": model}]
        settings: dict[str, Any] = {"triton": False, "compare": {}}
    else:
        if model is not None:
            raise UserError("give either MODEL or --config, not both")
        settings = load_config(config)
        entries = settings["models"]
        output = output or (Path(settings["output"]) if settings["output"] else None)
        if output is None:
            raise UserError(f'give -o OUT or set output = "..." in {config}')
    given = {k: v for k, v in cli["compare"].items() if v not in (None, ())}
    opts = compare_options(**{**_config_compare(settings["compare"]), **given})
    requests = []
    for entry in entries:
        precisions = cli["precisions"] or entry.get("precisions") or PRECISIONS
        out = output if len(entries) == 1 else output / Path(entry["name"]).stem
        requests.append(
            DeployRequest(
                model=entry["name"],
                output=out,
                model_options=_model_options(cli["model_options"], entry),
                dynamic_batch=_first(cli["dynamic_batch"], entry.get("dynamic_batch")),
                targets=cli["targets"] or entry.get("targets", ()),
                precisions=tuple(precisions),
                data=cli["data"] or entry.get("data"),
                eval_data=cli["eval_data"] or entry.get("eval_data"),
                preprocess=_preprocess(cli["preprocess"], entry.get("preprocess", {})),
                compare=replace(opts, data=None),
                triton=cli["triton"] or settings["triton"],
            )
        )
    return requests


def _first(*values: Any) -> Any:
    """The first value that is not None (command line first, then the config file)."""
    return next((v for v in values if v is not None), None)


def _model_options(cli: ModelOptions, entry: dict[str, Any]) -> ModelOptions:
    """The command line's model options over a config entry's (`input_shape`, `ema`, ...)."""
    checkpoint = entry.get("checkpoint")
    return ModelOptions(
        checkpoint=cli.checkpoint or (Path(checkpoint) if checkpoint else None),
        checkpoint_key=cli.checkpoint_key or entry.get("checkpoint_key"),
        use_ema=cli.use_ema and entry.get("ema", True),
        unsafe_load=cli.unsafe_load,  # never from a file: running pickled code is asked for
        model_args={**entry.get("model_args", {}), **cli.model_args},
        input_shapes=cli.input_shapes or entry.get("input_shape", ()),
        input_names=cli.input_names or entry.get("input_name", ()),
        output_names=cli.output_names or entry.get("output_name", ()),
    )


def _preprocess(cli: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Image preprocessing: the command line's values over the config's `preprocess` table."""
    from sase_deploy.commands._precision_options import parse_floats, parse_size

    parsed: dict[str, Any] = dict(entry)
    if isinstance(parsed.get("size"), str):
        parsed["size"] = parse_size(parsed["size"])
    for key in ("mean", "std"):
        value = parsed.get(key)
        parsed[key] = parse_floats(value, key) if isinstance(value, str) else value
    parsed.update({k: v for k, v in cli.items() if v is not None})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in parsed.items() if v is not None}


def _config_compare(section: dict[str, Any]) -> dict[str, Any]:
    """[compare] keys as compare_options arguments (command-line values override them)."""
    batches = section.get("batches")
    return {
        "samples": section.get("samples"),
        "batches": ",".join(str(b) for b in batches) if isinstance(batches, list) else batches,
        "runs": section.get("runs"),
        "warmup": section.get("warmup"),
        "tolerances": tuple(section.get("tolerances", ())),
    }


@click.command("deploy")
@click.argument("model", metavar="MODEL", required=False)
@model_options
@click.option("--dynamic-batch/--static-batch", default=None,
              help="Export with a symbolic batch dim, or a fixed one [default: dynamic when "
              "the model allows it].")  # fmt: skip
@click.option("--targets", help="Comma-separated targets [default: rtx when TensorRT-RTX is here].")
@click.option("--precisions", help="Comma-separated, of fp32,fp16,int8 [default: all three].")
@click.option("--data", help="Calibration data (image folder, .npy/.npz, latent[:SEED]) "
              "[default: the model's own, else random inputs].")  # fmt: skip
@click.option("--eval-data", help="Comparison inputs [default: the model's own, else --data].")
@image_options
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="deploy.toml.")
@click.option("--triton", is_flag=True, help="Also write a Triton model repository.")
@report_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def deploy_command(
    model: str | None,
    model_options: ModelOptions,
    dynamic_batch: bool | None,
    targets: str | None,
    precisions: str | None,
    data: str | None,
    eval_data: str | None,
    preprocess: dict[str, Any],
    config: Path | None,
    triton: bool,
    samples: int | None,
    batches: str | None,
    runs: int | None,
    warmup: int | None,
    tolerances: tuple[str, ...],
    output: Path | None,
    as_json: bool,
) -> None:
    """The whole job: export MODEL (fused), make FP16 and INT8 models, build engines per target,
    compare everything with PyTorch and write OUT/report.{json,md,html}. Re-running skips the
    stages whose inputs are unchanged.

    MODEL is a registered name, package.module:factory or a TorchScript file; a model of your
    own needs --input-shape (once per input), as for `export`.
    """

    compare = {"samples": samples, "batches": batches, "runs": runs, "warmup": warmup,
               "tolerances": tolerances}  # fmt: skip
    cli = {"model_options": model_options, "dynamic_batch": dynamic_batch,
           "targets": _split(targets), "precisions": _split(precisions), "data": data,
           "eval_data": eval_data, "preprocess": preprocess, "triton": triton,
           "compare": compare}  # fmt: skip
    results = [_deploy_one(request, as_json) for request in _requests(model, config, output, cli)]
    _finish(results, as_json)


def _deploy_one(request: Any, as_json: bool) -> Any:
    from sase_deploy.deploy.api import deploy

    # A log (stderr not a terminal) gets one line per stage: deploy is the long job CI runs.
    with stage_progress(log=True) as progress:
        result = deploy(request, progress=progress)
    if not as_json:
        for line in result.notes:
            note(f"note: {line}")
    return result


def _finish(results: list[Any], as_json: bool) -> None:
    failures = [f for r in results for f in r.build_failures]
    parity_error: ParityError | None = None
    if as_json:
        emit_json({"command": "deploy", "models": [r.to_dict() | {"verdict": r.report["verdict"],
                   "failures": r.report["failures"], "warnings": r.report.get("warnings", []),
                   "weights": r.report["model"].get("weights")} for r in results]})  # fmt: skip
    for result in results:
        try:
            if not as_json:
                finish(result.report, result.reports, False, "deploy")
            elif result.report["verdict"] == "fail":
                raise ParityError(result.report["failures"][0])
        except ParityError as exc:
            parity_error = parity_error or exc
    if failures:
        raise UserError(
            f"{len(failures)} build(s) failed (report written without them): {failures[0]}"
        )
    if parity_error is not None:
        raise parity_error
