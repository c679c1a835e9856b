"""The ``fxprune`` command line: ``main`` (the console script) and ``app`` (the typer app,
defined in ``fxprune.cli.root`` with its commands in ``prune``, ``deploy``, ``train`` and
``hpo.cli``).

Ctrl-C at any moment prints one line and exits 130. This module imports nothing but
``os``, ``sys`` and ``fxprune.cli.interrupts``, so the console script reaches ``main`` a
few milliseconds after Python starts. ``main`` first installs ``exit_on_interrupt`` (one
line, exit 130, at once: nothing is written yet), then imports the app (typer, rich:
~0.15 s) and parses the command line. While a command runs, its ``cli_errors`` lets
Ctrl-C raise ``KeyboardInterrupt`` instead, so that half-written outputs are removed and
the line says what was left behind. Only what runs before ``main`` is out of reach:
Python's own start-up (``site``) and the import of the ``fxprune`` package, about 15 ms on
an idle machine (more when loaded); an interrupt there ends the process by the signal,
or, inside ``site``, with Python's "Fatal Python error" text.

Usage errors (an unknown option, a bad value, a missing argument) are one ``error:`` line
too, naming the help to read, instead of click's boxed usage text.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fxprune.cli.interrupts import INTERRUPTED_LINE, install


def main() -> None:
    """The console script ``fxprune``."""
    install()  # Ctrl-C: one line and exit 130, before anything heavy is imported
    try:
        from fxprune.cli.common import error_line
        from fxprune.cli.root import app

        code = run(app, error_line)
    except KeyboardInterrupt:  # only where the handler could not be installed
        os.write(2, INTERRUPTED_LINE)
        code = 130
    sys.exit(code)


def run(app: Any, error_line: Any) -> int:
    """Run the typer app outside click's standalone mode, so that a usage error is one
    ``error:`` line like every other mistake. Returns the exit code."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # click's exceptions (vendored by typer): a usage error
        message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if message is None or not isinstance(exit_code, int):
            raise
        text = message().strip()
        if text and "\n" not in text:  # "fxprune" alone raises one whose help is printed
            context = getattr(exc, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            error_line(text.rstrip(".") + hint)
        return exit_code
    return code if isinstance(code, int) else 0


def __getattr__(name: str) -> Any:
    if name == "app":  # `from fxprune.cli import app`: the typer app, imported on first use
        from fxprune.cli.root import app

        return app
    raise AttributeError(f"module 'fxprune.cli' has no attribute {name!r}")


__all__ = ["app", "main", "run"]
