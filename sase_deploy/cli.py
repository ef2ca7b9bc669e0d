"""The `sase-deploy` command line: a thin shell over the library functions.

Exit codes: 0 success, 1 a parity/tolerance failure, 2 a user error (one line on stderr).
Every command takes `--json` and then prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from sase_deploy import __version__
from sase_deploy.commands.build import build_command
from sase_deploy.commands.calibrate import calibrate_command
from sase_deploy.commands.compare import compare_command
from sase_deploy.commands.convert import convert_command
from sase_deploy.commands.deploy import deploy_command
from sase_deploy.commands.export import export_command
from sase_deploy.commands.fuse import fuse_command
from sase_deploy.commands.models import models_command
from sase_deploy.commands.targets import doctor_command, targets_command
from sase_deploy.commands.triton import triton_command
from sase_deploy.errors import ParityError, UserError


class FlowOrderGroup(click.Group):
    """Lists commands in the order of the flow (as added below), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=FlowOrderGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="sase-deploy")
def cli() -> None:
    """Deploy squeeze-excitation models: export -> fuse -> calibrate -> build -> report."""


for command in (
    models_command,
    export_command,
    fuse_command,
    calibrate_command,
    convert_command,
    build_command,
    compare_command,
    deploy_command,
    triton_command,
    targets_command,
    doctor_command,
):
    cli.add_command(command)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps the two error roots (and click's usage errors) to exit codes."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        code = 130
    except click.ClickException as exc:  # usage errors: bad option, missing argument, bad value
        ctx_hint = "run 'sase-deploy --help' for usage"
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            ctx_hint = f"run '{exc.ctx.command_path} --help' for usage"
        click.echo(f"error: {_one_line(exc.format_message())} ({ctx_hint})", err=True)
        code = 2
    except UserError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        code = UserError.exit_code
    except ParityError as exc:
        click.echo(f"parity failure: {_one_line(str(exc))}", err=True)
        code = ParityError.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
