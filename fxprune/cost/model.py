"""``CostModel``: the MACs of the slim model as a function of the keep mask, for
FLOPs-aware selection (``flops=0.3`` targets, the ``synflow_flops`` scorer) and the
per-group MAC shares ``inspect`` prints.

It is the expected-cost polynomial (``expected.py``) with one unit per channel class and
no sections, evaluated at a 0/1 keep mask, which makes it exact for modules: every
conv, linear and other module rule contributes what its ``expected_cost`` hook says (a
product of kept input and output widths per conv group), so the same rules drive
selection, gated training and ``count_macs``. Functional ops (``F.conv2d``, ``matmul``,
attention) count their dense MACs as a constant, as the first release did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..analysis import ChannelGraph
from .expected import build_expected_cost


class CostModel:
    """Per-example MACs of ``graph.gm`` (shapes from its trace) under a class keep mask."""

    def __init__(self, graph: ChannelGraph, example_inputs: Any = None):
        # example_inputs: unused (the graph's traced shapes are the inputs'); kept so
        # callers written for the first release still work
        self.graph = graph
        n = graph.num_classes
        self.poly = build_expected_cost(graph, np.arange(n), n, [], track_l2=False)
        self.total = self.macs(np.ones(n, dtype=bool))

    def macs(self, keep: np.ndarray) -> float:
        """MACs of the slim model that keeps the classes where ``keep`` is True."""
        theta = torch.as_tensor(np.asarray(keep, dtype=np.float64))
        macs, _ = self.poly(theta, theta.new_ones(0))
        return float(macs)

    def class_costs(self, split: bool = False) -> np.ndarray:
        """MACs per class: the marginal saving of removing it alone (the derivative of
        the polynomial at full width), or with ``split`` every op's MACs shared half and
        half between its input and output channels, so the classes' costs add up to the
        MACs that depend on channels."""
        n = self.graph.num_classes
        if not split:
            theta = torch.ones(n, dtype=torch.float64, requires_grad=True)
            macs, _ = self.poly(theta, theta.new_ones(0))
            if not macs.requires_grad:  # no op depends on any channel
                return np.zeros(n)
            (grad,) = torch.autograd.grad(macs, theta)
            return grad.numpy()
        p = self.poly
        rows = p.num_rows
        w = p.w[:, 0].numpy()
        sides = [(p.a_rows.numpy(), p.a_idx.numpy()), (p.b_rows.numpy(), p.b_idx.numpy())]
        size = [np.bincount(r, minlength=rows) for r, _ in sides]
        real = [np.bincount(r[i < n], minlength=rows) for r, i in sides]
        value = w * size[0] * size[1]  # each row at full width
        both = (real[0] > 0) & (real[1] > 0)
        cost = np.zeros(n)
        for k, (r, i) in enumerate(sides):
            share = np.where(both, value / 2, np.where(real[k] > 0, value, 0.0))
            per_entry = share / np.maximum(size[k], 1)
            on = i < n
            np.add.at(cost, i[on], per_entry[r[on]])
        return cost


__all__ = ["CostModel"]
