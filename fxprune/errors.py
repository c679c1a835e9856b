"""Exception types. Every user-facing failure is an ``FxPruneError`` whose message is
one line that names the culprit (node, module path, group id, file) and says what to do.
The CLI prints ``str(err)`` on stderr and exits non-zero; it never shows a traceback for
these."""

from __future__ import annotations


class FxPruneError(Exception):
    """Base class: a user mistake or an unsupported input, explained in one line."""


class TraceError(FxPruneError):
    """The model could not be traced by torch.fx or shape-propagated on the example inputs."""


class ModelLoadError(FxPruneError):
    """A MODEL spec (file, callable, torchvision name, built-in name) could not be resolved."""


class ConfigError(FxPruneError, ValueError):
    """An option is out of range or inconsistent (ratio, min_ratio, provider, ...)."""


class PlanError(FxPruneError):
    """A pruning plan does not fit the model it is applied to, or is malformed."""


class ScoreError(FxPruneError):
    """A scorer produced unusable scores (not finite, wrong shape) for a named layer."""


class ExportError(FxPruneError):
    """ONNX export, checking or parity failed."""


class ProfileError(FxPruneError):
    """Latency profiling could not run (missing/corrupt ONNX file, unknown provider, ...)."""


class DataError(FxPruneError):
    """A data folder is missing or malformed."""


__all__ = [
    "FxPruneError",
    "TraceError",
    "ModelLoadError",
    "ConfigError",
    "PlanError",
    "ScoreError",
    "ExportError",
    "ProfileError",
    "DataError",
]
