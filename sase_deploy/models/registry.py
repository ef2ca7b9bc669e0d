"""The model registry: one explicit tuple of every architecture sase-deploy ships.

No decorators, no import side effects: a model is registered by appearing in `MODEL_SPECS`.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from sase_deploy.errors import UserError
from sase_deploy.models import digits, fastgan, resnets
from sase_deploy.models.spec import ModelSpec

MODEL_SPECS: tuple[ModelSpec, ...] = (*resnets.SPECS, *fastgan.SPECS, *digits.SPECS)


def list_model_specs() -> tuple[ModelSpec, ...]:
    return MODEL_SPECS


def get_model_spec(name: str) -> ModelSpec:
    for spec in MODEL_SPECS:
        if spec.name == name:
            return spec
    names = [s.name for s in MODEL_SPECS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(
        f"unknown model '{name}': {hint}run 'sase-deploy models' to list the registered names"
    )


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model (random weights) in eval mode."""
    model = get_model_spec(name).factory(**kwargs)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
