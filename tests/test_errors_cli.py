"""CLI exit codes: usage and user errors exit 2 with one line on stderr, no traceback."""

from __future__ import annotations

import click
import pytest

from sase_deploy import cli as cli_module
from sase_deploy.errors import ParityError, UserError


def assert_one_line_error(result) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("error:", "parity failure:"))
    assert "Traceback" not in result.stderr and not result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("no-such-command",), "No such command"),
        (("models", "--no-such-option"), "No such option"),
        (("--no-such-option",), "No such option"),
    ],
)
def test_usage_errors_exit_2_with_one_line(run_cli, args, expected) -> None:
    result = run_cli(*args)
    assert result.code == 2
    assert_one_line_error(result)
    assert expected in result.stderr and "--help" in result.stderr


def _command_raising(error: Exception) -> click.Command:
    @click.command("boom")
    def boom() -> None:
        raise error

    return boom


def test_user_error_exits_2_with_its_message(run_cli, monkeypatch) -> None:
    message = "checkpoint 'x.pth' does not exist;\n check the path"
    monkeypatch.setitem(cli_module.cli.commands, "boom", _command_raising(UserError(message)))
    result = run_cli("boom")
    assert result.code == 2
    assert_one_line_error(result)
    assert "checkpoint 'x.pth' does not exist; check the path" in result.stderr


def test_checkpoint_user_error_reaches_the_cli_as_one_line(run_cli, monkeypatch, tmp_path) -> None:
    from torch import nn

    from sase_deploy.models.checkpoint import load_checkpoint

    (tmp_path / "bad.pth").write_text("not a checkpoint")

    @click.command("load")
    def load() -> None:
        load_checkpoint(nn.Linear(2, 2), tmp_path / "bad.pth")

    monkeypatch.setitem(cli_module.cli.commands, "load", load)
    result = run_cli("load")
    assert result.code == 2
    assert_one_line_error(result)
    assert "not a readable PyTorch checkpoint" in result.stderr


def test_parity_error_exits_1(run_cli, monkeypatch) -> None:
    error = ParityError("max abs diff 0.3 > atol 0.01")
    monkeypatch.setitem(cli_module.cli.commands, "boom", _command_raising(error))
    result = run_cli("boom")
    assert result.code == 1
    assert_one_line_error(result)


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    error = ZeroDivisionError("a bug")
    monkeypatch.setitem(cli_module.cli.commands, "boom", _command_raising(error))
    with pytest.raises(ZeroDivisionError):
        cli_module.main(["boom"])
