"""MACs and parameter counting from the traced graph with real shapes, and the cost
model of FLOPs-aware selection.

Figures are per example (the forward pass divided by the first input's batch size).
Counted as multiply-accumulates (the convention of published figures such as
"ResNet-50: 4.1 GMACs"); which ops have MACs and how many is each op rule's ``macs``
hook in ``fxprune.ops`` (convolutions ``out.numel() * in/groups * prod(kernel)``,
transposed convolutions, linear layers and ``F.linear``/``F.conv*``, ``matmul``/``bmm``).
Normalisation layers, activations and other elementwise ops are counted separately in
``other_ops`` (one op per output element) and are not part of ``macs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from .analysis import ChannelGraph
from .ops import node_macs
from .trace import META_SHAPE, as_input_tuple, trace_model

# call_method nodes that only re-index memory: not counted in ``other_ops``
_LAYOUT_METHODS = ("view", "reshape", "permute", "transpose", "contiguous", "flatten", "size")


@dataclass
class MacsReport:
    macs: int
    params: int
    other_ops: int
    per_module: dict[str, int] = field(default_factory=dict)  # module qualname -> MACs

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params, "other_ops": self.other_ops}


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _tensor_numel(node: fx.Node) -> int | None:
    shape = node.meta.get(META_SHAPE)
    if isinstance(shape, tuple) and all(isinstance(x, int) for x in shape):
        return math.prod(shape)
    return None


def graph_macs(gm: fx.GraphModule) -> MacsReport:
    """Count a shape-annotated GraphModule (whole batch, not divided)."""
    modules = dict(gm.named_modules())
    macs = other = 0
    per_module: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        n = node_macs(node, modules)
        if n:
            macs += n
            if node.op == "call_module":
                per_module[node.target] = per_module.get(node.target, 0) + n
            continue
        numel = _tensor_numel(node)
        if numel is not None and not (node.op == "call_method" and node.target in _LAYOUT_METHODS):
            other += numel
    return MacsReport(macs, count_params(gm), other, per_module)


def macs_report(model: nn.Module, example_inputs: Any) -> MacsReport:
    """MACs, parameters and other ops of one forward pass on ``example_inputs``, per
    example. Neither the model nor its graph is modified (a GraphModule is re-used
    structurally, anything else is traced)."""
    inputs = as_input_tuple(example_inputs)
    gm = trace_model(model, inputs, copy_model=False)
    total = graph_macs(gm)
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 and inputs[0].shape[0] > 0 else 1
    per_module = {k: v // batch for k, v in total.per_module.items()}
    return MacsReport(total.macs // batch, count_params(model), total.other_ops // batch, per_module)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass per example (see ``macs_report``)."""
    return macs_report(model, example_inputs).macs


class CostModel:
    """Exact conv/linear MACs as a function of the keep mask."""

    def __init__(self, graph: ChannelGraph, example_inputs):
        self.graph = graph
        report = macs_report(graph.gm, example_inputs)
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


__all__ = ["MacsReport", "macs_report", "graph_macs", "count_macs", "count_params", "CostModel"]
