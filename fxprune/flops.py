"""MACs and parameter counting from the traced graph with real shapes.

Figures are per example (the forward pass divided by the first input's batch size).
Counted as multiply-accumulates (the convention of published figures such as
"ResNet-50: 4.1 GMACs"): convolutions (``out.numel() * in/groups * prod(kernel)``),
transposed convolutions, linear layers and ``F.linear``/``F.conv*``, ``matmul``/``bmm``.
Normalisation layers, activations and other elementwise ops are counted separately in
``other_ops`` (one op per output element) and are not part of ``macs``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


@dataclass
class FlopsReport:
    macs: int
    params: int
    other_ops: int
    per_module: dict[str, int] = field(default_factory=dict)  # module qualname -> MACs

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params, "other_ops": self.other_ops}


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _conv_macs(out: torch.Tensor, weight_shape: tuple) -> int:
    # weight: (C_out, C_in/groups, *k) for conv; out: (N, C_out, *spatial)
    per_out = math.prod(weight_shape[1:])
    return int(out.numel() * per_out)


class _Counter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.macs = 0
        self.other = 0
        self.per_module: dict[str, int] = {}

    def call_module(self, target, args, kwargs):
        out = super().call_module(target, args, kwargs)
        m = self.module.get_submodule(target)
        macs = 0
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            macs = _conv_macs(out, tuple(m.weight.shape))
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            x = args[0]
            macs = int(x.numel() * m.out_channels // m.groups * math.prod(m.kernel_size))
        elif isinstance(m, nn.Linear):
            macs = int(out.numel() * m.in_features)
        elif isinstance(out, torch.Tensor):
            self.other += out.numel()
        if macs:
            self.per_module[target] = self.per_module.get(target, 0) + macs
            self.macs += macs
        return out

    def call_function(self, target, args, kwargs):
        out = super().call_function(target, args, kwargs)
        if target in (F.conv1d, F.conv2d, F.conv3d, torch.conv2d, torch.conv1d, torch.conv3d):
            self.macs += _conv_macs(out, tuple(args[1].shape))
        elif target is F.linear:
            self.macs += int(out.numel() * args[1].shape[1])
        elif target in (torch.matmul, operator.matmul, torch.bmm, torch.mm):
            self.macs += int(out.numel() * args[0].shape[-1])
        elif isinstance(out, torch.Tensor):
            self.other += out.numel()
        return out

    def call_method(self, target, args, kwargs):
        out = super().call_method(target, args, kwargs)
        if target in ("matmul", "bmm", "mm"):
            self.macs += int(out.numel() * args[0].shape[-1])
        elif isinstance(out, torch.Tensor) and target not in ("view", "reshape", "permute",
                                                               "transpose", "contiguous",
                                                               "flatten", "size"):
            self.other += out.numel()
        return out


def count_flops(model: nn.Module, example_inputs: Any) -> FlopsReport:
    """Count MACs of one forward pass on ``example_inputs`` (model is not modified)."""
    from .trace import _as_tuple, symbolic_trace

    inputs = _as_tuple(example_inputs)
    gm = model if isinstance(model, fx.GraphModule) else symbolic_trace(model)
    counter = _Counter(gm)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter.run(*inputs)
    finally:
        model.train(was_training)
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 and inputs[0].shape[0] > 0 else 1
    per_module = {k: v // batch for k, v in counter.per_module.items()}
    return FlopsReport(counter.macs // batch, count_params(model), counter.other // batch, per_module)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    return count_flops(model, example_inputs).macs


__all__ = ["FlopsReport", "count_flops", "count_macs", "count_params"]
