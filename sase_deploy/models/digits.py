"""Placeholder: filled in by the model-zoo work."""

from sase_deploy.models.spec import ModelSpec

SPECS: tuple[ModelSpec, ...] = ()
