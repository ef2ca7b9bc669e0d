"""`sase-deploy models`: JSON and table output list every registered model."""

from __future__ import annotations

import pytest

from sase_deploy.models.registry import list_model_specs


@pytest.fixture(scope="module")
def registered() -> dict[str, object]:
    return {spec.name: spec for spec in list_model_specs()}


def test_models_json_lists_every_registered_model(run_cli, registered) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("models", "--json")
    assert result.code == 0, result.stderr
    payload = result.json()  # exactly one JSON object on stdout
    assert payload["command"] == "models" and payload["count"] == len(registered)
    assert [row["name"] for row in payload["models"]] == list(registered)
    for row in payload["models"]:
        spec = registered[row["name"]]
        assert row["family"] == spec.family and row["task"] == spec.task
        assert row["inputs"] and all(len(i["shape"]) >= 2 for i in row["inputs"])
        assert [i["name"] for i in row["inputs"]] == [i.name for i in spec.input_specs()]
        assert isinstance(row["parameters"], int) and row["parameters"] > 0
        assert row["se_blocks"] == dict(spec.se_blocks)


def test_models_table_shows_every_model(run_cli, registered) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("models")
    assert result.code == 0, result.stderr
    for name in registered:
        assert name in result.stdout
    assert "params" in result.stdout


def test_parameter_counts_match_a_real_build() -> None:
    """The meta-device count equals the parameters of the model actually built."""
    from sase_deploy.commands.models import count_spec_parameters
    from sase_deploy.models.registry import count_parameters

    cheap = [s for s in list_model_specs() if not s.name.startswith("fastgan")]
    for spec in cheap:
        assert count_spec_parameters(spec) == count_parameters(spec.factory()), spec.name


@pytest.mark.parametrize("args", [("--help",), ("models", "--help"), ("--version",)])
def test_help_and_version_exit_zero(run_cli, args) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(*args)
    assert result.code == 0 and result.stdout.strip() and not result.stderr
