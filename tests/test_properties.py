"""Property tests (hypothesis): the option parsers accept exactly what they document and answer
everything else with a UserError (never another exception), and the metrics keep their laws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sase_deploy.commands.build import parse_batch
from sase_deploy.commands.compare import parse_batches
from sase_deploy.errors import UserError
from sase_deploy.models.source import parse_model_args, parse_shape
from sase_deploy.report import metrics as m
from sase_deploy.report.tolerances import METRICS, parse_tolerances
from sase_deploy.vocabulary import PRECISIONS

dims = st.lists(st.integers(1, 4096), min_size=1, max_size=5)


def _user_error_or(func, text):  # type: ignore[no-untyped-def]
    """Call func(text): it returns, or raises UserError (anything else fails the test)."""
    try:
        return func(text)
    except UserError as exc:
        assert "\n" not in str(exc)
        return None


@given(dims, st.sampled_from(["x", "X", ","]))
def test_parse_shape_round_trips(values: list[int], sep: str) -> None:
    assert parse_shape(sep.join(map(str, values))) == tuple(values)


@given(st.text(max_size=30))
def test_parse_shape_never_crashes(text: str) -> None:
    shape = _user_error_or(parse_shape, text)
    assert shape is None or all(isinstance(d, int) and d >= 1 for d in shape)


@given(st.lists(st.integers(1, 64), min_size=1, max_size=6))
def test_parse_batches_sorts_and_dedups(values: list[int]) -> None:
    assert parse_batches(",".join(map(str, values))) == tuple(sorted(set(values)))


@given(st.text(max_size=20))
def test_parse_batches_and_profile_never_crash(text: str) -> None:
    found = _user_error_or(parse_batches, text)
    assert found is None or all(b >= 1 for b in found)
    profile = _user_error_or(parse_batch, text)
    assert profile is None or 1 <= profile[0] <= profile[1] <= profile[2]


@given(
    st.sampled_from([*PRECISIONS, ""]),
    st.sampled_from([*METRICS, "rel", "top1", "psnr"]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_tolerance_overrides_land_where_they_say(precision: str, metric: str, value: float):
    key = f"{precision}.{metric}" if precision else metric
    table = parse_tolerances([f"{key}={value!r}"])
    metric = {"rel": "rel_max_abs", "top1": "top1_agreement", "psnr": "psnr_db"}.get(metric, metric)
    for p in PRECISIONS:
        if not precision or p == precision:
            assert table[p][metric] == value


@given(st.text(max_size=30))
def test_tolerance_and_model_args_never_crash(text: str) -> None:
    _user_error_or(lambda t: parse_tolerances([t]), text)
    _user_error_or(lambda t: parse_model_args([t]), text)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-6, 1.0))
def test_metrics_laws(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((4, 3, 8, 8))
    got = ref + rng.normal(0, noise, ref.shape)
    out = m.output_metrics("y", ref, got)
    assert 0 <= out["mean_abs"] <= out["max_abs"]
    assert out["rel_max_abs"] == pytest.approx(out["max_abs"] / np.abs(ref).max())
    assert -1 <= out["cosine"] <= 1 and sum(out["error_histogram"]["counts"]) == ref.size
    gen = m.generation_metrics(ref, got)
    assert gen["ssim"] <= 1 + 1e-12 and gen["psnr_db"] > 0
    assert m.generation_metrics(ref, ref)["ssim"] == pytest.approx(1.0)
