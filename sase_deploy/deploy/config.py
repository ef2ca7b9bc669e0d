"""`deploy --config deploy.toml`: a matrix of models x targets x precisions in one file.

    output = "out"                      # optional; -o wins
    targets = ["rtx", "orin-nano"]      # for every model unless a model sets its own
    precisions = ["fp32", "fp16", "int8"]
    triton = true

    [compare]                           # optional: as compare's options
    batches = [1, 8]
    runs = 50
    tolerances = ["fp16.rel=0.05"]

    [[models]]
    name = "sase_resnet_digits"         # registry name, module:factory or TorchScript file
    [[models]]
    name = "fastgan_slim_256"
    precisions = ["fp32", "fp16"]
    checkpoint = "ckpt/g.pt"            # relative paths are relative to the TOML file
    checkpoint_key = "g_ema"
    data = "latent"
    model_args = { noise = "off" }

    [[models]]
    name = "mynet.models:build"         # a model of your own: its inputs, as `export` takes them
    input_shape = ["1x3x64x64", "1x10"] # one per input (a string for one input)
    input_name = ["image", "meta"]
    output_name = "logits"
    dynamic_batch = true
    data = "calib.npz"
    preprocess = { size = "64x64", mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }

With several models each goes to OUT/<model name>/. Keys are the command-line options' names
with `_` for `-`; an option given on the command line wins over the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sase_deploy.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOP_KEYS = {
    "output", "targets", "precisions", "triton", "compare", "models", "data", "eval_data",
    "dynamic_batch", "preprocess",
}  # fmt: skip
MODEL_KEYS = {
    "name", "checkpoint", "checkpoint_key", "ema", "targets", "precisions", "data", "eval_data",
    "model_args", "input_shape", "input_name", "output_name", "dynamic_batch", "preprocess",
}  # fmt: skip
INHERITED_KEYS = ("targets", "precisions", "data", "eval_data", "dynamic_batch", "preprocess")
PREPROCESS_KEYS = {"size", "resize", "mean", "std", "channel_order", "scale"}
COMPARE_KEYS = {"batches", "runs", "warmup", "samples", "tolerances"}


def _unknown(found: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(found) - allowed)
    if extra:
        raise UserError(f"{where}: unknown keys {extra}; allowed: {', '.join(sorted(allowed))}")


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def _path(value: Any, base: Path, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string")
    is_path = value != "latent" and not value.startswith("latent:") and ":" not in value[1:2]
    return str(base / value) if is_path and not Path(value).is_absolute() else value


def _model_entry(entry: dict[str, Any], raw: dict[str, Any], base: Path, at: str) -> dict[str, Any]:
    """One [[models]] entry, completed from the top level, its values checked and parsed."""
    from sase_deploy.models.source import parse_shape

    merged: dict[str, Any] = {k: raw[k] for k in INHERITED_KEYS if k in raw}
    merged.update(entry)
    for key in ("targets", "precisions", "input_name", "output_name"):
        if key in merged:
            merged[key] = _strings(merged[key], key, at)
    if "input_shape" in merged:
        merged["input_shape"] = tuple(
            parse_shape(text) for text in _strings(merged["input_shape"], "input_shape", at)
        )
    for key in ("checkpoint", "data", "eval_data"):
        if key in merged:
            merged[key] = _path(merged[key], base, key, at)
    for key, kind in (("checkpoint_key", str), ("ema", bool), ("dynamic_batch", bool)):
        if key in merged and not isinstance(merged[key], kind):
            raise UserError(f"{at}: '{key}' must be a {'string' if kind is str else 'boolean'}")
    for key in ("model_args", "preprocess"):
        if not isinstance(merged.get(key, {}), dict):
            raise UserError(f"{at}: {key} must be a table, e.g. {key} = {{ ... }}")
    if "preprocess" in merged:
        _unknown(merged["preprocess"], PREPROCESS_KEYS, f"{at} preprocess")
    return merged


def load_config(path: Path) -> dict[str, Any]:
    """The validated config: {output, triton, compare{}, models: [{name, targets, precisions,
    checkpoint, data, eval_data, model_args}]} with model entries completed from the top level."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config {path} is not valid TOML: {exc}") from None
    where = str(path)
    _unknown(raw, TOP_KEYS, where)
    compare = raw.get("compare", {})
    if not isinstance(compare, dict):
        raise UserError(f"{where}: [compare] must be a table")
    _unknown(compare, COMPARE_KEYS, f"{where} [compare]")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise UserError(f"{where}: add at least one [[models]] entry with a name")
    base = path.parent
    entries = []
    for index, entry in enumerate(models):
        at = f"{where} models[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f'{at}: each [[models]] entry needs name = "MODEL"')
        _unknown(entry, MODEL_KEYS, at)
        entries.append(_model_entry(entry, raw, base, at))
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a model is listed twice; give each [[models]] name once")
    output = raw.get("output")
    return {
        "output": _path(output, base, "output", where) if output else None,
        "triton": bool(raw.get("triton", False)),
        "compare": compare,
        "models": entries,
    }
