"""fxprune: structured pruning by torch.fx graph surgery.

    >>> import fxprune
    >>> result = fxprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    >>> result.model      # a new, physically smaller GraphModule
    >>> result.plan       # PrunePlan, JSON-serialisable
"""

from .api import PruneConfig, PruneResult, analyze, apply_plan, load_slim, prune, save_slim
from .errors import (
    ConfigError,
    DataError,
    ExportError,
    FxPruneError,
    ModelLoadError,
    PlanError,
    ProfileError,
    ScoreError,
    TraceError,
)
from .flops import count_flops, count_macs, count_params
from .graph import ChannelGraph, ChannelGroup, build_channel_graph
from .plan import PrunePlan
from .surgery import slim
from .trace import trace_model
from .train_prune import TrainPruneOptions, TrainPruneResult, train_prune
from .verify import verify_equivalence

__version__ = "0.1.0"

__all__ = [
    "analyze",
    "prune",
    "apply_plan",
    "save_slim",
    "load_slim",
    "slim",
    "trace_model",
    "build_channel_graph",
    "verify_equivalence",
    "train_prune",
    "TrainPruneOptions",
    "TrainPruneResult",
    "count_flops",
    "count_macs",
    "count_params",
    "PruneConfig",
    "PruneResult",
    "PrunePlan",
    "ChannelGraph",
    "ChannelGroup",
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
