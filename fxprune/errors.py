"""Exception types. Every user-facing failure is an ``FxPruneError`` whose message is
one line that names the culprit (node, module path, group id, file) and says what to do.
The CLI prints ``str(err)`` on stderr and exits non-zero; it never shows a traceback for
these."""

from __future__ import annotations


class FxPruneError(Exception):
    """Base class: a user mistake or an unsupported input, explained in one line.
    ``exit_code`` is the command line's exit status for it."""

    exit_code = 2


class TraceError(FxPruneError):
    """The model could not be traced by torch.fx or shape-propagated on the example inputs."""


class ModelLoadError(FxPruneError):
    """A MODEL spec (file, callable, torchvision name, built-in name) could not be resolved."""


class ConfigError(FxPruneError, ValueError):
    """An option is out of range or inconsistent (ratio, min_ratio, provider, ...)."""


class PlanError(FxPruneError):
    """A pruning plan does not fit the model it is applied to, or is malformed; or one of
    fxprune's own files (slim.pt, meta.json, plan.json, summary.json) is missing or corrupt."""


class NothingToPruneError(FxPruneError):
    """The settings or the model leave no channel to remove (exit code 3: an answer, not a crash)."""

    exit_code = 3


class OutputError(ConfigError):
    """An output path cannot be written, or writing it would destroy files fxprune did not write."""


class ScoreError(FxPruneError):
    """A scorer produced unusable scores (not finite, wrong shape) for a named layer."""


class ExportError(FxPruneError):
    """ONNX export, checking or parity failed."""


class ProfileError(FxPruneError):
    """Latency profiling could not run (missing/corrupt ONNX file, unknown provider, ...)."""


class DataError(FxPruneError):
    """A data folder is missing or malformed."""


__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "FxPruneError",
    "ModelLoadError",
    "NothingToPruneError",
    "OutputError",
    "PlanError",
    "ProfileError",
    "ScoreError",
    "TraceError",
]
