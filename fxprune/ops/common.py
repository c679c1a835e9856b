"""Helpers shared by op rules: argument access, broadcasting merges, parameter slicing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..analysis import Builder, Labels
from ..trace import META_SHAPE
from .shapes import size_arithmetic


# ----------------------------------------------------------------------------- helpers
def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def shape_of(value: Any) -> tuple | None:
    """The shape of a tensor-valued node (from ``trace``'s shape propagation), else None."""
    if not isinstance(value, fx.Node):
        return None
    s = value.meta.get(META_SHAPE)
    return s if isinstance(s, tuple) and all(isinstance(x, int) for x in s) else None


def out_shape(node: fx.Node) -> tuple | None:
    return shape_of(node)


def numel(value: Any) -> int:
    """Element count of a tensor-valued node (0 when it is not one)."""
    s = shape_of(value)
    return math.prod(s) if s is not None else 0


def merge_elementwise(b: Builder, node: fx.Node, operands: list[fx.Node], shape: tuple) -> Labels:
    """Broadcasting elementwise op: operand dims that line up are cut together."""
    pairs = [(b.shape(op), b.labels(op)) for op in operands]
    return merge_broadcast(
        b, node, [(s, lab) for s, lab in pairs if s is not None and lab is not None], shape
    )


def merge_broadcast(
    b: Builder, node: fx.Node, operands: list[tuple[tuple, Labels]], shape: tuple
) -> Labels:
    """Union the labels of (shape, labels) operands along every non-broadcast dim of
    ``shape``; a channel dim meeting a plain dim of the same size is frozen."""
    n = len(shape)
    out: Labels = [None] * n
    for d in range(n):
        arrays, plain = [], False
        for s, lab in operands:
            k = d - (n - len(s))
            if k >= 0 and s[k] == 1 and shape[d] != 1 and lab[k] is not None:
                # one channel broadcast over a whole dim (FocalNet's gates[:, l:l + 1]):
                # removing it would leave nothing to broadcast
                b.freeze(lab[k], f"a single channel is broadcast at node '{node.name}'")
            if k < 0 or (s[k] == 1 and shape[d] != 1):
                continue
            if lab[k] is None:
                plain = True
            else:
                arrays.append(lab[k])
        if arrays:
            for a in arrays[1:]:
                b.union(arrays[0], a)
            if plain:
                b.freeze(arrays[0], f"meets a non-channel dimension at node '{node.name}'")
            out[d] = arrays[0]
    return out


def elementwise(b: Builder, node: fx.Node) -> Labels | None:
    shape = out_shape(node)
    if shape is None and not b.tensor_args(node):
        size_arithmetic(node)  # C // n_head, B * T: where the sizes came from flows on
        return None
    if shape is None:
        return b.unhandled_op(node, "elementwise op with a non-tensor output")
    return merge_elementwise(b, node, b.tensor_args(node), shape)


def spatial_passthrough(b: Builder, node: fx.Node, x: fx.Node, spatial: int) -> Labels:
    """Ops acting on the trailing ``spatial`` dims (pooling, interpolation)."""
    xl = b.labels(x)
    shape = out_shape(node)
    if xl is None or shape is None:
        return b.unhandled_op(node, "spatial op on a non-tensor")
    lead = len(shape) - spatial
    for arr in xl[lead:]:
        b.freeze(arr, f"spatial op '{node.name}' acts on a channel dimension")
    return list(xl[:lead]) + [None] * spatial


def slice_param(module: nn.Module, name: str, dim: int, index: np.ndarray) -> None:
    """Keep only ``index`` along ``dim`` of the tensor attribute ``name`` of ``module``
    (a parameter stays a parameter, a buffer a buffer); for rules' ``slice_`` and for
    surgery's ``get_attr`` tensors. A missing attribute (``bias=None``) is left alone."""
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor):
        return
    idx = torch.as_tensor(index, dtype=torch.long, device=t.device)
    new = torch.index_select(t.data, dim, idx).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)
