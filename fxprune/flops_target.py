"""FLOPs-aware selection: our answer to the paper's own complaint (section 5.2) that
single-shot Synflow keeps too many channels in early, high-resolution layers, so latency
falls much less than the parameter count.

Two pieces, usable together or apart:

* a per-class *cost*: the MACs that disappear with one channel class (its share of every
  conv/linear whose input or output it indexes), from the traced shapes;
* ``synflow_flops`` scorer: Synflow's score, turned into a percentile rank in (0, 1], then
  divided by the class's cost relative to the mean cost ("score per FLOP"); the plain
  ``ratio`` rule on that score prunes expensive, low-saliency channels first;
* ``target="flops=0.3"``: instead of a channel count, prune in score order until the
  estimated MACs fall to 30% of the dense model (min_ratio still applies); the estimate
  is exact for conv/linear MACs (a product of kept in/out widths per layer).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .errors import ConfigError
from .graph import ChannelGraph
from .scoring import register_scorer
from .select import select_channels


class CostModel:
    """Exact conv/linear MACs as a function of the keep mask."""

    def __init__(self, graph: ChannelGraph, example_inputs):
        from .flops import count_flops

        self.graph = graph
        report = count_flops(graph.gm, example_inputs)
        self.total = report.macs
        self.layers = []  # (macs, out_space, in_space, grouped)
        for name, macs in report.per_module.items():
            m = graph.gm.get_submodule(name)
            if isinstance(m, nn.Linear):
                o, i = f"{name}.out_features", f"{name}.in_features"
                grouped = False
            elif isinstance(m, nn.modules.conv._ConvNd):
                o, i = f"{name}.out_channels", f"{name}.in_channels"
                grouped = m.groups > 1
            else:
                continue
            self.layers.append((macs, graph.spaces.get(o), graph.spaces.get(i), grouped))
        self.fixed = self.total - sum(layer[0] for layer in self.layers)

    def macs(self, keep: np.ndarray) -> float:
        g = self.graph
        total = float(self.fixed)
        for macs, out_s, in_s, grouped in self.layers:
            f = 1.0
            if out_s is not None:
                f *= keep[g.atom_class[out_s.atoms]].mean()
            if in_s is not None and not grouped:
                f *= keep[g.atom_class[in_s.atoms]].mean()
            total += macs * f
        return total

    def class_costs(self, split: bool = False) -> np.ndarray:
        """MACs per class: the marginal saving of removing it (a layer counts for both its
        input and output classes), or with ``split`` each layer's MACs shared half and
        half between its input and output, so the classes' costs add up to the total."""
        g = self.graph
        cost = np.zeros(g.num_classes)
        for macs, out_s, in_s, grouped in self.layers:
            spaces = [s for s in (out_s, None if grouped else in_s) if s is not None]
            share = macs / len(spaces) if split and spaces else macs
            for s in spaces:
                np.add.at(cost, g.atom_class[s.atoms], share / len(s.atoms))
        return cost


def parse_target(target: str) -> float:
    key, _, value = target.partition("=")
    try:
        frac = float(value)
    except ValueError:
        frac = -1.0
    if key.strip().lower() not in ("flops", "macs") or not 0.0 < frac <= 1.0:
        raise ConfigError(f"target must look like 'flops=0.3' (a fraction in (0, 1]), got {target!r}")
    return frac


def select_for_target(graph: ChannelGraph, scores: np.ndarray, example_inputs, target: str,
                      min_ratio: float, round_to: int | None) -> np.ndarray:
    """Smallest channel cut (in score order) whose estimated MACs reach the target."""
    frac = parse_target(target)
    cost = CostModel(graph, example_inputs)
    goal = frac * cost.total
    lo, hi = 0.0, 0.999
    best = select_channels(graph, scores, hi, min_ratio, round_to)
    if cost.macs(best) > goal:
        return best  # the floor keeps more than the target; closest we can get
    for _ in range(20):  # bisection on the channel ratio
        mid = (lo + hi) / 2
        keep = select_channels(graph, scores, mid, min_ratio, round_to)
        if cost.macs(keep) <= goal:
            hi, best = mid, keep
        else:
            lo = mid
    return best


@register_scorer("synflow_flops")
class SynflowPerFlop:
    """Synflow saliency per MAC saved (see module docstring)."""

    name = "synflow_flops"
    needs_data = False
    class_level = True  # returns one score per class, not per producer index

    def __init__(self, linearize: bool = False):
        self.linearize = linearize

    def __call__(self, graph, example_inputs, data=None):
        from .scoring import class_scores
        from .synflow import SynflowScorer

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


__all__ = ["CostModel", "select_for_target", "parse_target", "SynflowPerFlop"]
