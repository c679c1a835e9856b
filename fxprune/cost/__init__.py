"""What a model costs: MACs and parameter counts (``counting``), the exact expected-cost
polynomial under keep probabilities (``expected``, used by gated training), and the
``CostModel`` of FLOPs-aware selection built from it (``model``). The per-op figures come
from the op rules in ``fxprune.ops`` (``macs`` and ``expected_cost`` hooks)."""

from .counting import (
    MacsReport,
    SizeChange,
    count_macs,
    count_params,
    estimate_module_macs,
    graph_macs,
    leaf_macs,
    macs_report,
)
from .expected import CostBuilder, ExpectedCost, build_expected_cost
from .model import CostModel

__all__ = [
    "CostBuilder",
    "CostModel",
    "ExpectedCost",
    "MacsReport",
    "SizeChange",
    "build_expected_cost",
    "count_macs",
    "count_params",
    "estimate_module_macs",
    "graph_macs",
    "leaf_macs",
    "macs_report",
]
