"""The ``fxprune`` command line: ``main`` (the console script) and ``app`` (the typer app,
defined in ``fxprune.cli.root`` with its commands in ``prune``, ``deploy``, ``train`` and
``hpo.cli``).

This module imports nothing but ``os``, ``signal`` and ``sys``, so the console script
reaches ``main`` a few milliseconds after Python starts. ``main`` first makes Ctrl-C exit
with one line and code 130, then imports the app (typer, rich: ~0.15 s) and runs it; from
then on an interrupt is a ``KeyboardInterrupt`` that the command's ``cli_errors`` turns into
one line saying what was left behind. Only Python's own start-up (``site``, before any of
fxprune runs) is outside its reach: an interrupt there ends the process by the signal.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

INTERRUPTED_LINE = b"error: interrupted\n"


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    # Nothing is written yet and the app is half imported: say one line and leave at once
    # (no exception unwinding through importlib, no atexit hooks, no second traceback).
    os.write(2, INTERRUPTED_LINE)
    os._exit(130)


def main() -> None:
    """The console script ``fxprune``: Ctrl-C at any moment prints one line and exits 130."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started in the background (`fxprune ... &`): stay deaf
        previous = None
    else:
        try:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        except ValueError:  # not the main thread: signals are not ours to handle
            previous = None
    try:
        from fxprune.cli.common import error_line
        from fxprune.cli.root import app

        if previous is not None:
            signal.signal(signal.SIGINT, previous)  # a KeyboardInterrupt again, for cli_errors
        try:
            app()
        except SystemExit as done:
            # typer turns Ctrl-C outside a command (while parsing) into a silent exit 130
            inner = done.__context__
            if done.code == 130 and isinstance(getattr(inner, "__cause__", None), KeyboardInterrupt):
                error_line("interrupted")
            raise
    except KeyboardInterrupt:
        if previous is not None:  # a second Ctrl-C while this line is written: the same line
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        os.write(2, INTERRUPTED_LINE)
        sys.exit(130)


def __getattr__(name: str) -> Any:
    if name == "app":  # `from fxprune.cli import app`: the typer app, imported on first use
        from fxprune.cli.root import app

        return app
    raise AttributeError(f"module 'fxprune.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
