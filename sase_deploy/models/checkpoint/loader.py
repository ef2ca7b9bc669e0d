"""`load_checkpoint`: read a file, extract and fit its weights, load them and report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sase_deploy._io import sha256_file
from sase_deploy.errors import UserError
from sase_deploy.models.checkpoint.containers import extract_state_dict
from sase_deploy.models.checkpoint.key_fitting import (
    _checkpoint_parameter_test,
    _mismatch_message,
    _try_stripping_wrapper_attribute,
    fit_state_dict,
)
from sase_deploy.models.checkpoint.safe_load import read_checkpoint


@dataclass
class LoadReport:
    """What `load_checkpoint` did; export writes it into its manifest (`to_dict`)."""

    source: str
    sha256: str
    container: str  # state_dict | wrapped | fastgan | module
    key: str | None  # container key the weights came from (None for a bare state dict)
    ema_applied: bool
    prefixes_stripped: list[str] = field(default_factory=list)
    spectral_norm_baked: list[str] = field(default_factory=list)  # layers baked while loading
    missing_keys: list[str] = field(default_factory=list)  # only non-empty with strict=False
    unexpected_keys: list[str] = field(default_factory=list)  # only non-empty with strict=False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    key: str | None = None,
    use_ema: bool = True,
    unsafe_load: bool = False,
    strict: bool = True,
    model_name: str | None = None,
) -> LoadReport:
    """Load `path` into `model` in place, leave it in eval mode and report what was done.

    `key` picks a container entry (`state_dict`, `g`, `g_ema`, ...); `use_ema` prefers EMA
    weights when the container has them; `unsafe_load` allows pickled code (trusted files only);
    `strict=False` loads what fits and lists the rest in the report instead of raising.
    """
    path = Path(path)
    label = model_name or type(model).__name__
    obj = read_checkpoint(path, unsafe_load=unsafe_load)
    model_keys = list(model.state_dict().keys())
    weights = extract_state_dict(
        obj,
        key=key,
        use_ema=use_ema,
        is_parameter=_checkpoint_parameter_test(model),
        model_keys=model_keys,
    )
    fit = fit_state_dict(model, weights.state_dict)
    if fit.missing:
        fit = _try_stripping_wrapper_attribute(model, weights, fit)
    if strict and (fit.missing or fit.unexpected or fit.mismatched):
        raise UserError(_mismatch_message(label, fit, weights))
    model.load_state_dict(fit.state_dict, strict=False)
    model.eval()
    report = LoadReport(
        source=str(path.resolve()),
        sha256=sha256_file(path),
        container=weights.container,
        key=weights.key,
        ema_applied=weights.ema_applied,
        prefixes_stripped=weights.prefixes_stripped,
        spectral_norm_baked=fit.baked,
        missing_keys=fit.missing,
        unexpected_keys=fit.unexpected,
        notes=list(weights.notes),
    )
    if fit.baked:
        report.notes.append(f"baked spectral norm of {len(fit.baked)} layers into plain weights")
    if fit.mismatched:
        report.notes.append("shape mismatches skipped: " + "; ".join(fit.mismatched[:5]))
    return report
