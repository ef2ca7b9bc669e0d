"""`sase-deploy models`: JSON and table output list every registered model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sase_deploy.models.registry import list_model_specs
from sase_deploy.models.spec import ModelSpec

LAYOUTS = Path("/work/shared/official_layouts")


@pytest.fixture(scope="module")
def registered() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in list_model_specs()}


@pytest.mark.slow  # builds every model once (the FastGAN generators calibrate BatchNorm): ~20 s
def test_models_json_lists_every_registered_model(run_cli, registered) -> None:
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


@pytest.mark.slow  # fast after the JSON test (counts are cached per process), ~20 s alone
def test_models_table_shows_every_model(run_cli, registered) -> None:
    result = run_cli("models")
    assert result.code == 0, result.stderr
    for name in registered:
        assert name in result.stdout
    assert "params" in result.stdout


@pytest.mark.slow  # builds the five official-layout models (free after the JSON test)
def test_parameter_counts_equal_the_official_code() -> None:
    """Where the official layout is known, the listed count equals the official model's."""
    from sase_deploy.commands.models import count_spec_parameters

    if not LAYOUTS.is_dir():
        pytest.skip(f"{LAYOUTS} (layouts read from the official code) is not in this checkout")
    checked = 0
    for spec in list_model_specs():
        layout = LAYOUTS / f"{spec.name}.json"
        if layout.is_file():
            expected = json.loads(layout.read_text())["num_parameters"]
            assert count_spec_parameters(spec) == expected, spec.name
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("args", [("--help",), ("models", "--help"), ("--version",)])
def test_help_and_version_exit_zero(run_cli, args) -> None:
    result = run_cli(*args)
    assert result.code == 0 and result.stdout.strip() and not result.stderr


def readme_models_table() -> dict[str, dict[str, str]]:
    readme = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    section = readme.split("<!-- section:models -->")[1].split("<!-- /section:models -->")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = {"family": cells[1], "params": cells[3], "se": cells[4]}
    return table


def test_readme_table_lists_the_registry() -> None:
    table = readme_models_table()
    assert list(table) == [spec.name for spec in list_model_specs()]
    for spec in list_model_specs():
        row = table[spec.name]
        assert row["family"] == spec.family
        assert row["se"] == ", ".join(f"{k}:{v}" for k, v in spec.se_blocks.items())


@pytest.mark.slow  # builds every model (free after the JSON test)
def test_readme_table_parameter_counts() -> None:
    from sase_deploy.commands.models import count_spec_parameters

    table = readme_models_table()
    for spec in list_model_specs():
        assert table[spec.name]["params"] == f"{count_spec_parameters(spec) / 1e6:.2f}M"
