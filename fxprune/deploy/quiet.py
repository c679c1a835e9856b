"""Keeping exporters quiet and their errors short: one line a user can read.

torch.onnx prints graph dumps from C++ on file descriptors 1/2 when it fails, logs
through ``logging`` and raises warnings; ``quiet()`` silences all three (recording the
warnings) and ``first_line`` turns an exception into ``Kind: first sentence``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Silence Python warnings (recorded and returned), logging, and fd 1/2."""
    import logging

    with warnings.catch_warnings(record=True) as caught, silenced_fds():
        warnings.simplefilter("always")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield caught
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def silenced_fds() -> Iterator[None]:
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with open(os.devnull, "w") as devnull:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:
                    continue
                os.dup2(devnull.fileno(), fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def first_line(error: object, limit: int = 160) -> str:
    """``Kind: first line`` of an error or warning, cut at the first sentence and ``limit``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    line = text.splitlines()[0].strip() if text else ""
    line = line.split(". ")[0].rstrip(".")
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    if isinstance(error, BaseException):
        kind = type(error).__name__
        return f"{kind}: {line}" if line else kind
    return line


def deepest_reason(error: BaseException) -> str:
    """torch.onnx wraps the real cause ("Failed to export ... step 1/3"); dig it out."""
    cause: BaseException | None = error
    deepest = error
    while cause is not None:
        deepest = cause
        cause = cause.__cause__
    return first_line(deepest)


__all__ = ["deepest_reason", "first_line", "quiet", "silenced_fds"]
