"""MACs and parameter counting from the traced graph with real shapes.

Figures are per example (the forward pass divided by the first input's batch size).
Counted as multiply-accumulates (the convention of published figures such as
"ResNet-50: 4.1 GMACs"); which ops have MACs and how many is each op rule's ``macs``
hook in ``fxprune.ops`` (convolutions ``out.numel() * in/groups * prod(kernel)``,
transposed convolutions, linear layers and ``F.linear``/``F.conv*``, ``matmul``/``bmm``).
Normalisation layers, activations and other elementwise ops are counted separately in
``other_ops`` (one op per output element) and are not part of ``macs``.

A module no rule knows (a leaf: user-chosen, or automatic because it does not trace) has
no MAC hook; ``macs_report`` estimates it by tracing the leaf alone on the inputs the
graph gives it and counting that by the rules (if its own forward does not trace either,
by summing over its children). ``MacsReport.estimated_macs`` is that part of ``macs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..errors import TraceError
from ..ops import module_rule_for, node_macs
from ..trace import (
    META_SHAPE,
    UntraceableRoot,
    as_input_tuple,
    capture_module_inputs,
    trace_model,
)

# call_method nodes that only re-index memory: not counted in ``other_ops``
_LAYOUT_METHODS = ("view", "reshape", "permute", "transpose", "contiguous", "flatten", "size")


@dataclass
class MacsReport:
    macs: int
    params: int
    other_ops: int
    per_module: dict[str, int] = field(default_factory=dict)  # module qualname -> MACs
    estimated_macs: int = 0  # part of ``macs`` estimated for leaves (see module docstring)
    estimated: list[str] = field(default_factory=list)  # those leaves' qualnames

    def to_dict(self) -> dict[str, Any]:
        out = {"macs": self.macs, "params": self.params, "other_ops": self.other_ops}
        if self.estimated:
            out["estimated_macs"] = self.estimated_macs
        return out


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
    leaves = leaf_macs(gm, inputs)
    for name, macs in leaves.items():
        total.per_module[name] = total.per_module.get(name, 0) + macs
    estimated = sum(leaves.values())
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 and inputs[0].shape[0] > 0 else 1
    per_module = {k: v // batch for k, v in total.per_module.items()}
    return MacsReport((total.macs + estimated) // batch, count_params(model),
                      total.other_ops // batch, per_module, estimated // batch, sorted(leaves))


def leaf_macs(gm: fx.GraphModule, inputs: tuple) -> dict[str, int]:
    """Estimated MACs (whole batch) of each called module no op rule knows: the graph is
    run once to record each leaf's inputs, which ``estimate_module_macs`` then uses."""
    modules = dict(gm.named_modules())
    leaves = {n.target for n in gm.graph.nodes
              if n.op == "call_module" and module_rule_for(modules[n.target]) is None}
    if not leaves:
        return {}
    calls = capture_module_inputs(gm, inputs)
    return {name: sum(estimate_module_macs(modules[name], args)
                      for args in calls.get(name, []) if args)
            for name in sorted(leaves)}


def estimate_module_macs(module: nn.Module, args: tuple) -> int:
    """MACs of one call (whole batch): traced alone and counted by the rules (leaves inside
    estimated the same way), else the sum over its children on the inputs they were
    called with (ops in its own forward then go uncounted); 0 when nothing works."""
    if not all(isinstance(a, torch.Tensor) for a in args):
        return 0
    try:
        gm = trace_model(module, args, copy_model=False)
    except UntraceableRoot:
        calls = capture_module_inputs(module, args)
        return sum(estimate_module_macs(child, a) for name, child in module.named_children()
                   for a in calls.get(name, []) if a)
    except TraceError:
        return 0
    return graph_macs(gm).macs + sum(leaf_macs(gm, args).values())


class SizeChange:
    """What every pruning result reports the same way: parameters and MACs before and
    after, their reductions, and the two rows of the result table. A mixin for dataclasses
    with ``params_before``, ``params_after``, ``macs_before`` and ``macs_after`` fields."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def param_reduction(self) -> float:
        return self.params_before / max(1, self.params_after)

    @property
    def macs_reduction(self) -> float:
        return self.macs_before / max(1, self.macs_after)

    def size_summary(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "param_reduction": round(self.param_reduction, 4),
            "macs_reduction": round(self.macs_reduction, 4),
        }

    def size_table(self, title: str, macs_label: str = "MACs") -> Any:
        """A rich Table (dense, slim, reduction) holding the params and MACs rows; callers
        add their own rows below."""
        from rich.table import Table

        table = Table(title=title)
        table.add_column("")
        for column in ("dense", "slim", "reduction"):
            table.add_column(column, justify="right")
        table.add_row("params", f"{self.params_before:,}", f"{self.params_after:,}",
                      f"{self.param_reduction:.2f}x")
        table.add_row(macs_label, f"{self.macs_before:,}", f"{self.macs_after:,}",
                      f"{self.macs_reduction:.2f}x")
        return table


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass per example (see ``macs_report``)."""
    return macs_report(model, example_inputs).macs


__all__ = [
    "MacsReport",
    "SizeChange",
    "count_macs",
    "count_params",
    "estimate_module_macs",
    "graph_macs",
    "leaf_macs",
    "macs_report",
]
