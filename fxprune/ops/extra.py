"""Rules for ops that used to freeze what they touch: pixel (un)shuffle, ``nn.Unflatten``,
recurrent layers, and rounding.

* **PixelShuffle(r)** turns each block of ``r*r`` consecutive input channels into one
  output channel: a block is cut as a unit (its atoms are unioned), and the output
  channel carries the block's label. **PixelUnshuffle(r)** is the reverse: each input
  channel becomes ``r*r`` consecutive output channels carrying its label.
* **nn.Unflatten** is a reshape (``fxprune.ops.layout.reshape_labels``); when a split-off
  dim carries channels, its size in ``unflattened_size`` shrinks with them (a
  non-producer module space per such dim).
* **RNN / GRU / LSTM** (and their cells): the input features are prunable from the
  producer side (``weight_ih_l0[_reverse]`` loses columns, ``input_size`` shrinks); the
  hidden size is kept (outputs carry no channel labels, initial states are frozen).
  MACs: every weight matrix once per time step and batch element.
* **round / floor / ceil / trunc / frac / fix**: elementwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import plain_labels
from ..trace import META_SHAPE
from .common import arg, elementwise, out_shape, shape_of
from .layout import reshape_labels
from .registry import ModuleRule, register_function, register_method, register_module

# ------------------------------------------------------------------------- rounding
register_function(torch.round, torch.floor, torch.ceil, torch.trunc, torch.frac, torch.fix)(elementwise)
register_method("round", "round_", "floor", "floor_", "ceil", "ceil_", "trunc", "trunc_", "frac",
                "fix")(elementwise)


# ------------------------------------------------------------------ pixel (un)shuffle
def _shuffle_labels(b, node, x, factor: int, unshuffle: bool):
    xl, shape = b.labels(x), out_shape(node)
    if xl is None or shape is None or len(xl) < 3 or not isinstance(factor, int):
        return b.unhandled_op(node, "pixel (un)shuffle of an unknown tensor")
    ch = len(xl) - 3
    for arr in xl[ch + 1:]:
        b.freeze(arr, f"pixel (un)shuffle '{node.name}' moves a channel dimension into space")
    out = list(xl[:ch]) + [None] * 3
    channels = xl[ch]
    if channels is None:
        return out
    block = factor * factor
    if unshuffle:  # input channel c -> output channels c*r^2 .. c*r^2 + r^2 - 1
        out[ch] = np.repeat(channels, block)
    else:  # output channel c <- input channels c*r^2 .. c*r^2 + r^2 - 1, cut together
        rows = channels.reshape(-1, block)
        b.union(np.repeat(rows[:, :1], block, axis=1).ravel(), rows.ravel())
        out[ch] = np.ascontiguousarray(rows[:, 0])
    return out


@register_module(nn.PixelShuffle)
class PixelShuffle(ModuleRule):
    def propagate(self, b, node, m, name):
        return _shuffle_labels(b, node, node.args[0], m.upscale_factor, unshuffle=False)


@register_module(nn.PixelUnshuffle)
class PixelUnshuffle(ModuleRule):
    def propagate(self, b, node, m, name):
        return _shuffle_labels(b, node, node.args[0], m.downscale_factor, unshuffle=True)


@register_function(F.pixel_shuffle, torch.pixel_shuffle)
def _pixel_shuffle(b, node):
    return _shuffle_labels(b, node, arg(node, 0, "input"), arg(node, 1, "upscale_factor"), False)


@register_function(F.pixel_unshuffle, torch.pixel_unshuffle)
def _pixel_unshuffle(b, node):
    return _shuffle_labels(b, node, arg(node, 0, "input"), arg(node, 1, "downscale_factor"), True)


# ------------------------------------------------------------------------ Unflatten
@register_module(nn.Unflatten)
class Unflatten(ModuleRule):
    """``unflattened_size`` entries of channel-carrying dims shrink with the channels."""

    def propagate(self, b, node, m, name):
        x = node.args[0]
        xl, in_shape, shape = b.labels(x), b.shape(x), out_shape(node)
        if xl is None or in_shape is None or shape is None:
            return b.unhandled_op(node, "Unflatten of a non-tensor")
        out = reshape_labels(b, node, in_shape, xl, shape)
        first = m.dim % len(in_shape)
        for k in range(len(m.unflattened_size)):
            label = out[first + k]
            if label is not None:
                space = b.module_space(name, f"size{k}", shape[first + k], producer=False)
                b.union(space, label)
        return out

    def slice_(self, m, keep):
        sizes = list(m.unflattened_size)
        for k in range(len(sizes)):
            if f"size{k}" in keep:
                sizes[k] = len(keep[f"size{k}"])
        m.unflattened_size = tuple(sizes)


# ------------------------------------------------------------------- recurrent layers
def _cut_columns(module: nn.Module, name: str, index: np.ndarray) -> None:
    """Keep only the columns ``index`` of the weight ``name`` (a new Parameter)."""
    weight = getattr(module, name)
    kept = torch.index_select(weight.data, 1, torch.as_tensor(index, device=weight.device)).clone()
    setattr(module, name, nn.Parameter(kept, requires_grad=weight.requires_grad))


class _Recurrent(ModuleRule):
    """nn.RNN/GRU/LSTM: only the input features are prunable (see the module docstring)."""

    cell = False

    def propagate(self, b, node, m, name):
        x = node.args[0]
        xl = b.labels(x)
        if xl is None or shape_of(x) is None:
            return b.unhandled_op(node, f"{type(m).__name__} on a non-tensor input")
        for extra in list(node.args[1:]) + list(node.kwargs.values()):
            b.freeze_labels(b.labels(extra), f"initial state of '{name}' (hidden size is kept)")
        for arr in xl[:-1]:
            b.freeze(arr, f"'{name}' reads a channel dimension as time or batch")
        atoms = b.module_space(name, "input_size", m.input_size, producer=False)
        b.tie(atoms, xl[-1], f"{name}.input_size")
        return plain_labels(node.meta.get(META_SHAPE))

    def slice_(self, m, keep):
        if "input_size" not in keep:
            return
        index = keep["input_size"]
        names = ["weight_ih"] if self.cell else [
            f"weight_ih_l0{suffix}" for suffix in ("", "_reverse")[: 2 if m.bidirectional else 1]
        ]
        for param in names:
            _cut_columns(m, param, index)
        m.input_size = len(index)
        if not self.cell:
            m._init_flat_weights()  # the flat weight list still points at the old tensors

    def macs(self, node, m):
        in_shape = shape_of(node.args[0])
        if in_shape is None:
            return 0
        weights = sum(p.numel() for n, p in m.named_parameters() if n.startswith("weight"))
        if self.cell:  # (N, H_in) or (H_in,)
            steps = in_shape[0] if len(in_shape) == 2 else 1
        else:  # (L, N, H_in), (N, L, H_in) or unbatched (L, H_in)
            steps = math.prod(in_shape[:-1])
        return weights * steps


@register_module(nn.RNN, nn.GRU, nn.LSTM)
class Recurrent(_Recurrent):
    pass


@register_module(nn.RNNCell, nn.GRUCell, nn.LSTMCell)
class RecurrentCell(_Recurrent):
    cell = True


__all__ = ["PixelShuffle", "PixelUnshuffle", "Recurrent", "RecurrentCell", "Unflatten"]
