"""Ctrl-C on the command line: one line and exit code 130 at any moment.

Outside a command (importing the app, parsing) ``exit_on_interrupt`` ends the process at
once: nothing is written yet. Inside a command (``interrupts_raised``, entered by the one
error wrapper ``cli_errors``) Ctrl-C raises ``KeyboardInterrupt`` as usual, so staging
folders and temporary files are removed on the way out and the line says what was left.
Imports only ``os`` and ``signal``: the console script installs the handler before
anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

INTERRUPTED_LINE = b"error: interrupted\n"


def exit_on_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler outside a command: one line and exit 130 at once (no exception
    unwinding through a half-done import, no atexit hooks, no second traceback)."""
    os.write(2, INTERRUPTED_LINE)
    os._exit(130)


def install() -> None:
    """Make Ctrl-C exit at once with one line, unless SIGINT is ignored (started in the
    background: ``fxprune ... &``) or this is not the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    with contextlib.suppress(ValueError):  # not the main thread: signals are not ours
        signal.signal(signal.SIGINT, exit_on_interrupt)


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """Inside a command Ctrl-C raises ``KeyboardInterrupt`` (so half-written outputs are
    removed on the way out); outside, ``exit_on_interrupt`` exits at once. Changes nothing
    where that handler is not installed (tests, the Python API)."""
    ours = signal.getsignal(signal.SIGINT) is exit_on_interrupt
    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, exit_on_interrupt)


__all__ = ["INTERRUPTED_LINE", "exit_on_interrupt", "install", "interrupts_raised"]
