"""Writing a Triton model repository: one folder per model, `<repo>/<name>/config.pbtxt` and the
model file in version folder `1/`, each file written atomically with the config last."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from sase_deploy._io import atomic_path, write_text_atomic
from sase_deploy.errors import UserError
from sase_deploy.serving.model import TritonModel, check_model_name
from sase_deploy.serving.pbtxt import config_pbtxt


def _external_files(onnx_path: Path) -> list[str]:
    """External-data files of an ONNX, relative to its folder, each checked to be there."""
    from sase_deploy.engines.bundle import inspect_onnx  # also refuses paths leaving the folder

    found = inspect_onnx(onnx_path)[0]
    for location in found:
        if not (onnx_path.parent / location).is_file():
            raise UserError(f"{onnx_path}: external data file {location!r} is missing beside it")
    return found


def _copy(src: Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)  # a copy, not a link: the repo must outlive the build folder
    return dest


def _check_models(models: Sequence[TritonModel]) -> None:
    """UserError for an invalid or duplicate name or a missing artifact, before any write."""
    seen: dict[str, Path] = {}
    for model in models:
        check_model_name(model.name)
        if model.name in seen:
            raise UserError(
                f"two models named {model.name!r} ({seen[model.name]} and {model.artifact}); "
                "give them distinct names"
            )
        seen[model.name] = model.artifact
        if not Path(model.artifact).is_file():
            raise UserError(f"no such file: {model.artifact}; pass a built engine or an .onnx")


def write_triton_repository(models: Sequence[TritonModel], repo: Path) -> list[Path]:
    """Write each of `models` into repository folder `repo`; returns the paths written.

    Per model: `<repo>/<name>/1/model.plan` (or `model.onnx` and its external-data files) and
    then `<repo>/<name>/config.pbtxt`, each file atomically. The config goes last so that a
    server polling the repository never sees a config without its model. An existing model of
    the same name is overwritten (a re-deploy); other files in its folder are left alone.

    Raises:
        UserError: an invalid or duplicate name, or an output place that cannot be written.
    """
    repo = Path(repo)
    _check_models(models)
    written: list[Path] = []
    for model in models:
        config, model_file = model.paths_in(repo)
        written.append(_copy(model.artifact, model_file))
        if model.platform == "onnxruntime_onnx":
            for location in _external_files(model.artifact):
                src = model.artifact.parent / location
                written.append(_copy(src, model_file.parent / location))
        written.append(write_text_atomic(config, config_pbtxt(model)))
    return written
