"""The root ``fxprune`` typer app: its commands in three modules, the hpo group mounted.

    prune.py   models, inspect, prune
    deploy.py  export, profile
    train.py   train-prune
    hpo        mounted from ``hpo.cli`` (the hpo package's own command module)
    common.py  the one error wrapper and the shared options

Commands only assemble results and print them; a user mistake is one red line and a
non-zero exit code (``common.cli_errors``), never a traceback. Everything heavy (torch,
onnxruntime, optuna) is imported inside the commands, so ``fxprune --help``, every
command's ``--help`` and ``fxprune --version`` answer at once. The console script itself
is ``fxprune.cli.main``, which imports this module only after it can handle Ctrl-C.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fxprune.cli import deploy, prune, train

app = typer.Typer(
    name="fxprune",
    help="Structured pruning by torch.fx graph surgery: inspect, prune, export, profile, HPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from fxprune import __version__

        typer.echo(f"fxprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    """Structured pruning by torch.fx graph surgery: inspect, prune, export, profile, HPO."""


prune.register(app)
deploy.register(app)
train.register(app)


def _mount_hpo() -> None:
    from hpo.cli import hpo_app

    app.add_typer(hpo_app, name="hpo")


_mount_hpo()

__all__ = ["app"]
