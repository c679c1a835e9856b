"""``synflow_flops``: Synflow saliency per MAC saved, our answer to the paper's own
complaint (section 5.2) that single-shot Synflow keeps too many channels in early,
high-resolution layers, so latency falls much less than the parameter count.

Synflow's score is turned into a percentile rank in (0, 1], then divided by the class's
cost (the MACs that disappear with it, ``cost.CostModel.class_costs``) relative to the
mean cost; the plain ``ratio`` rule on that score prunes expensive, low-saliency channels
first. The budget form, ``target="flops=0.3"``, is ``selection.select_for_target``.
"""

from __future__ import annotations

import numpy as np

from ..cost import CostModel
from .base import class_scores, register_scorer
from .synflow import SynflowScorer


@register_scorer("synflow_flops")
class SynflowPerFlop:
    """Synflow saliency per MAC saved (see module docstring)."""

    name = "synflow_flops"
    needs_data = False
    class_level = True  # returns one score per class, not per producer index

    def __init__(self, linearize: bool = False):
        self.linearize = linearize

    def __call__(self, graph, example_inputs, data=None):
        base = class_scores(graph, SynflowScorer(self.linearize)(graph, example_inputs))
        finite = np.isfinite(base)
        rank = np.ones_like(base)
        order = np.argsort(base[finite], kind="stable")
        r = np.empty(len(order))
        r[order] = (np.arange(len(order)) + 1) / max(1, len(order))
        rank[finite] = r
        cost = CostModel(graph, example_inputs).class_costs()
        rel = cost / max(1e-12, cost[cost > 0].mean()) if (cost > 0).any() else np.ones_like(cost)
        return rank / np.maximum(rel, 1e-3)


__all__ = ["SynflowPerFlop"]
