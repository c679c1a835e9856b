"""fxprune: structured pruning by torch.fx graph surgery.

    >>> import torch, fxprune
    >>> from fxprune.models import create_model
    >>> model = create_model("resnet20")
    >>> result = fxprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, scorer="l1")
    >>> result.params_after < result.params_before   # result.model: a new, smaller GraphModule
    True
    >>> sorted(result.plan.to_dict())                 # result.plan: PrunePlan, JSON-serialisable
    ['groups', 'modules', 'parameters', 'settings', 'summary', 'version']
"""

import importlib
from typing import Any

# Public names -> the module defining them. They are imported on first use (PEP 562), so
# `import fxprune` (and the command line's --help) does not pay for torch until needed.
_EXPORTS = {
    "PruneConfig": ".api", "PruneResult": ".api", "analyze": ".api", "apply_plan": ".api",
    "load_slim": ".api", "prune": ".api", "save_slim": ".api",
    "ConfigError": ".errors", "DataError": ".errors", "ExportError": ".errors",
    "FxPruneError": ".errors", "ModelLoadError": ".errors", "PlanError": ".errors",
    "ProfileError": ".errors", "ScoreError": ".errors", "TraceError": ".errors",
    "ChannelGraph": ".analysis", "ChannelGroup": ".analysis",
    "count_macs": ".cost", "count_params": ".cost", "macs_report": ".cost",
    "build_channel_graph": ".ops", "register_function": ".ops", "register_method": ".ops",
    "register_module": ".ops",
    "PrunePlan": ".plan",
    "slim": ".surgery",
    "trace_model": ".trace",
    "TrainPruneOptions": ".train_prune", "TrainPruneResult": ".train_prune",
    "train_prune": ".train_prune",
    "verify_equivalence": ".verify",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:  # a submodule used as an attribute: fxprune.loading, fxprune.io, ...
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'fxprune' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ConfigError",
    "DataError",
    "ExportError",
    "FxPruneError",
    "ModelLoadError",
    "PlanError",
    "ProfileError",
    "PruneConfig",
    "PrunePlan",
    "PruneResult",
    "ScoreError",
    "TraceError",
    "TrainPruneOptions",
    "TrainPruneResult",
    "analyze",
    "apply_plan",
    "build_channel_graph",
    "count_macs",
    "count_params",
    "load_slim",
    "macs_report",
    "prune",
    "register_function",
    "register_method",
    "register_module",
    "save_slim",
    "slim",
    "trace_model",
    "train_prune",
    "verify_equivalence",
]
