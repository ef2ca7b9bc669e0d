"""The parity report document: its JSON Schema and validation.

The schema is package data (`assets/report.schema.json`); docs/report-schema.md describes the
fields and the versioning rule. jsonschema is a dev extra, imported only when validating.
"""

from __future__ import annotations

import json
import math
import reprlib
from functools import lru_cache
from importlib import resources
from itertools import pairwise
from typing import Any

from sase_deploy.errors import UserError

SCHEMA_VERSION = 1
"""Bumped on any incompatible change to the document; new optional fields do not bump it."""

SCHEMA_MINOR = 2
"""Bumped when optional fields are added (compatible: a reader of `SCHEMA_VERSION` may ignore
them); written as `schema_minor`, absent in documents from before it (read as 0)."""

_MAX_MESSAGE = 200


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return (
        resources.files("sase_deploy").joinpath("assets", "report.schema.json").read_text("utf-8")
    )


def load_schema() -> dict[str, Any]:
    """Return the report JSON Schema (draft 2020-12) shipped with the package (a fresh copy)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def validate_report(doc: dict[str, Any]) -> None:
    """Raise `UserError` (one line: JSON path and problem) unless `doc` is a valid report.

    Beyond the schema it checks what JSON Schema cannot say: no NaN/Infinity anywhere (unmeasured
    numbers are null) and histograms with len(edges) == len(counts) + 1 (or both empty) and
    strictly increasing edges.
    """
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match
    except ImportError:
        raise UserError(
            "validating a report needs jsonschema: pip install jsonschema "
            "(or pip install 'sase-deploy[dev]')"
        ) from None
    validator = Draft202012Validator(load_schema())
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        # jsonschema quotes the whole offending value; a short repr keeps the message one line.
        path, problem = (
            error.json_path,
            error.message.replace(repr(error.instance), reprlib.repr(error.instance)),
        )
        if error.validator == "required" and isinstance(error.instance, dict):
            # Name the missing key in the path: "$.verdict: required property missing".
            missing = [k for k in error.validator_value if k not in error.instance]
            if missing:
                path, problem = _join(path, missing[0]), "required property missing"
        _fail(path, problem)
    _check_finite(doc, "$")
    for i, cand in enumerate(doc["candidates"]):
        for j, out in enumerate(cand["outputs"]):
            _check_histogram(out["error_histogram"], f"$.candidates[{i}].outputs[{j}]")


def _fail(path: str, problem: str) -> None:
    if len(problem) > _MAX_MESSAGE:  # instances such as data URIs would flood the line
        problem = problem[: _MAX_MESSAGE - 1] + "…"
    raise UserError(f"invalid report at {path}: {problem}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def _check_finite(node: Any, path: str) -> None:
    # json.loads accepts NaN/Infinity and jsonschema counts them as numbers; the format says null.
    if isinstance(node, float) and not math.isfinite(node):
        _fail(path, f"{node} is not allowed (write null for a value that was not measured)")
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, _join(path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{path}[{i}]")


def _check_histogram(hist: dict[str, Any] | None, path: str) -> None:
    if hist is None:
        return
    edges, counts = hist["edges"], hist["counts"]
    if not edges and not counts:  # nothing compared (an empty output)
        return
    if len(edges) != len(counts) + 1:
        _fail(
            f"{path}.error_histogram",
            f"{len(edges)} edges for {len(counts)} counts (need len(counts) + 1 edges)",
        )
    if any(b <= a for a, b in pairwise(edges)):
        _fail(f"{path}.error_histogram.edges", "edges must be strictly increasing")
