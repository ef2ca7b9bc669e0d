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
    data = "latent"
    model_args = { noise = "off" }

With several models each goes to OUT/<model name>/.
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

TOP_KEYS = {"output", "targets", "precisions", "triton", "compare", "models", "data", "eval_data"}
MODEL_KEYS = {"name", "checkpoint", "targets", "precisions", "data", "eval_data", "model_args"}
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
        merged: dict[str, Any] = {
            k: raw[k] for k in ("targets", "precisions", "data", "eval_data") if k in raw
        }
        merged.update(entry)
        for key in ("targets", "precisions"):
            if key in merged:
                merged[key] = _strings(merged[key], key, at)
        for key in ("checkpoint", "data", "eval_data"):
            if key in merged:
                merged[key] = _path(merged[key], base, key, at)
        if not isinstance(merged.get("model_args", {}), dict):
            raise UserError(f"{at}: model_args must be a table")
        entries.append(merged)
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
