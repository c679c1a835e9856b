"""Parametric layers: conv, transposed conv, linear, embedding, norms, PReLU, and their functional forms."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import Builder, Labels
from .common import arg, numel, out_shape, shape_of, slice_param
from .registry import ModuleRule, register_function, register_module


# ------------------------------------------------------------------ conv / linear
def _channel_dim(ndim: int, spatial: int) -> int:
    return ndim - spatial - 1


def _couple_groups(b: Builder, in_atoms: np.ndarray, out_atoms: np.ndarray, groups: int) -> None:
    """Grouped conv: each conv group (its input and output channels) is one unit, so
    pruning removes whole groups and ``groups`` shrinks; depthwise is the case
    ``in_channels == groups``, with any channel multiplier."""
    ins = in_atoms.reshape(groups, -1)
    outs = out_atoms.reshape(groups, -1)
    head = ins[:, :1]
    b.union(np.repeat(head, ins.shape[1], axis=1).ravel(), ins.ravel())
    b.union(np.repeat(head, outs.shape[1], axis=1).ravel(), outs.ravel())


def _kept_groups(keep_in: np.ndarray, per_group: int, groups: int) -> np.ndarray:
    kept = np.unique(keep_in // per_group)
    expect = (kept[:, None] * per_group + np.arange(per_group)).ravel()
    if len(expect) != len(keep_in) or not np.array_equal(np.sort(keep_in), expect):
        raise AssertionError("grouped conv: kept input channels are not whole groups")
    return kept


class _ConvBase(ModuleRule):
    transposed = False

    def producer_weight(self, m, attr):
        # weight: (C_out, C_in/groups, *k); transposed: (C_in, C_out/groups, *k)
        return ("weight", 1 if self.transposed else 0) if attr == "out_channels" else None

    def macs(self, node, m):
        if self.transposed:  # every input element meets C_out/groups kernels
            return numel(node.args[0]) * m.out_channels // m.groups * math.prod(m.kernel_size)
        return numel(node) * math.prod(m.weight.shape[1:])  # out.numel * C_in/groups * k

    def expected_cost(self, cb, node, m, name, first):
        out_key = f"{name}.out_channels"
        cb.weight_pair(node, first, m.weight, out_key, f"{name}.in_channels", m.groups,
                       self.macs(node, m) / cb.batch, transposed=self.transposed)
        cb.vector(node, first, m.bias, out_key)

    def propagate(self, b, node, m, name):
        x = node.args[0]
        xl, shape = b.labels(x), out_shape(node)
        spatial = len(m.kernel_size)
        ch = _channel_dim(len(shape), spatial)
        out_atoms = b.module_space(name, "out_channels", m.out_channels, producer=True)
        in_atoms = b.module_space(name, "in_channels", m.in_channels, producer=False)
        b.tie(in_atoms, xl[ch], f"{name}.in_channels")
        if m.groups > 1:
            _couple_groups(b, in_atoms, out_atoms, m.groups)
        for arr in xl[ch + 1 :]:
            b.freeze(arr, f"conv '{name}' reads a channel dimension as spatial")
        out: Labels = list(xl[:ch]) + [out_atoms] + [None] * spatial
        return out

    def slice_(self, m, keep):
        keep_out = keep.get("out_channels", np.arange(m.out_channels))
        keep_in = keep.get("in_channels", np.arange(m.in_channels))
        in_dim, out_dim = (0, 1) if self.transposed else (1, 0)
        if m.groups == 1:
            slice_param(m, "weight", out_dim, keep_out)
            slice_param(m, "weight", in_dim, keep_in)
        else:
            kept = _kept_groups(keep_in, m.in_channels // m.groups, m.groups)
            if self.transposed:
                slice_param(m, "weight", 0, keep_in)
            else:
                slice_param(m, "weight", 0, keep_out)
            m.groups = len(kept)
        slice_param(m, "bias", 0, keep_out)
        m.in_channels, m.out_channels = len(keep_in), len(keep_out)


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class Conv(_ConvBase):
    pass


@register_module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTranspose(_ConvBase):
    transposed = True


@register_module(nn.Linear)
class Linear(ModuleRule):
    def producer_weight(self, m, attr):
        return ("weight", 0) if attr == "out_features" else None

    def macs(self, node, m):
        return numel(node) * m.in_features

    def expected_cost(self, cb, node, m, name, first):
        out_key = f"{name}.out_features"
        cb.weight_pair(node, first, m.weight, out_key, f"{name}.in_features", 1,
                       self.macs(node, m) / cb.batch)
        cb.vector(node, first, m.bias, out_key)

    def propagate(self, b, node, m, name):
        xl = b.labels(node.args[0])
        out_atoms = b.module_space(name, "out_features", m.out_features, producer=True)
        in_atoms = b.module_space(name, "in_features", m.in_features, producer=False)
        b.tie(in_atoms, xl[-1], f"{name}.in_features")
        return list(xl[:-1]) + [out_atoms]

    def slice_(self, m, keep):
        if "out_features" in keep:
            slice_param(m, "weight", 0, keep["out_features"])
            slice_param(m, "bias", 0, keep["out_features"])
            m.out_features = len(keep["out_features"])
        if "in_features" in keep:
            slice_param(m, "weight", 1, keep["in_features"])
            m.in_features = len(keep["in_features"])


@register_module(nn.Embedding)
class Embedding(ModuleRule):
    def producer_weight(self, m, attr):
        return ("weight", 1) if attr == "embedding_dim" else None

    def expected_cost(self, cb, node, m, name, first):
        if not first:
            return
        sections = cb.sections_of(node)
        units = cb.units(f"{name}.embedding_dim")  # weight (num_embeddings, dim)
        if units is None:
            cb.const(0, m.weight.numel(), sections)
        else:
            cb.single(units, 0, m.num_embeddings, sections)
        cb.decay_const(m.weight, sections)

    def propagate(self, b, node, m, name):
        shape = out_shape(node)
        atoms = b.module_space(name, "embedding_dim", m.embedding_dim, producer=True, weak=True)
        return [None] * (len(shape) - 1) + [atoms]

    def slice_(self, m, keep):
        if "embedding_dim" in keep:
            slice_param(m, "weight", 1, keep["embedding_dim"])
            m.embedding_dim = len(keep["embedding_dim"])


# ------------------------------------------------------------------ normalisation
_CHANNEL_PARAMS = ("weight", "bias", "running_mean", "running_var")


class _PerChannel(ModuleRule):
    """Norms with per-channel parameters on dim 1 (``num_features``)."""

    attr = "num_features"
    exact = True

    def channel_dim(self, m, ndim):
        return 1 if ndim > 1 else 0

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        ch = self.channel_dim(m, len(xl))
        size = getattr(m, self.attr)
        atoms = b.module_space(name, self.attr, size, producer=False)
        b.tie(atoms, xl[ch], f"{name}.{self.attr}")
        if xl[ch] is None:
            xl[ch] = atoms
        if not self.exact:
            b.mark_inexact(atoms, f"{type(m).__name__} '{name}' normalises across channels")
        self.extra(b, m, name, atoms)
        return xl

    def extra(self, b, m, name, atoms):
        pass

    def expected_cost(self, cb, node, m, name, first):
        for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
            cb.vector(node, first, p, f"{name}.{self.attr}")

    def slice_(self, m, keep):
        if self.attr in keep:
            for p in _CHANNEL_PARAMS:
                slice_param(m, p, 0, keep[self.attr])
            setattr(m, self.attr, len(keep[self.attr]))


@register_module(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
class BatchNorm(_PerChannel):
    pass


@register_module(nn.GroupNorm)
class GroupNorm(_PerChannel):
    """GroupNorm: each normalisation group is one unit, so whole groups are pruned and
    the statistics of the kept groups are unchanged (exact). ``num_groups == 1`` is a
    LayerNorm over channels: any channel can go, but statistics change (inexact)."""

    attr = "num_channels"

    def extra(self, b, m, name, atoms):
        if m.num_groups == 1:
            b.mark_inexact(atoms, f"GroupNorm '{name}' with one group normalises across channels")
        elif m.num_groups < m.num_channels:
            rows = atoms.reshape(m.num_groups, -1)
            b.union(np.repeat(rows[:, :1], rows.shape[1], axis=1).ravel(), rows.ravel())

    def slice_(self, m, keep):
        if self.attr in keep:
            n = len(keep[self.attr])
            if m.num_groups > 1:
                m.num_groups = n // (m.num_channels // m.num_groups)
            for p in ("weight", "bias"):
                slice_param(m, p, 0, keep[self.attr])
            m.num_channels = int(n)


@register_module(nn.LayerNorm)
class LayerNorm(ModuleRule):
    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        k = len(m.normalized_shape)
        if k != 1:
            for arr in xl[-k:]:
                b.freeze(arr, f"LayerNorm '{name}' normalises over several dims")
            return xl
        atoms = b.module_space(name, "normalized_shape", m.normalized_shape[0], producer=False)
        b.tie(atoms, xl[-1], f"{name}.normalized_shape")
        b.mark_inexact(atoms, f"LayerNorm '{name}' normalises across channels")
        return xl

    def expected_cost(self, cb, node, m, name, first):
        for p in (m.weight, m.bias):
            cb.vector(node, first, p, f"{name}.normalized_shape")

    def slice_(self, m, keep):
        if "normalized_shape" in keep:
            idx = keep["normalized_shape"]
            slice_param(m, "weight", 0, idx)
            slice_param(m, "bias", 0, idx)
            m.normalized_shape = (len(idx),)


@register_module("torchvision.models.convnext.LayerNorm2d")
class LayerNorm2d(LayerNorm):
    """torchvision's channels-first LayerNorm (permute, LayerNorm, permute back)."""

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        atoms = b.module_space(name, "normalized_shape", m.normalized_shape[0], producer=False)
        b.tie(atoms, xl[1], f"{name}.normalized_shape")
        b.mark_inexact(atoms, f"LayerNorm2d '{name}' normalises across channels")
        return xl


@register_module(nn.PReLU)
class PReLU(ModuleRule):
    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        if m.num_parameters > 1:
            atoms = b.module_space(name, "num_parameters", m.num_parameters, producer=False)
            b.tie(atoms, xl[1 if len(xl) > 1 else 0], f"{name}.num_parameters")
        return xl

    def expected_cost(self, cb, node, m, name, first):
        cb.vector(node, first, m.weight, f"{name}.num_parameters")

    def slice_(self, m, keep):
        if "num_parameters" in keep:
            slice_param(m, "weight", 0, keep["num_parameters"])
            m.num_parameters = len(keep["num_parameters"])


# ------------------------------------------------------------ functional parametric ops
def _bias_tie(b, bias, atoms, where):
    """Tie the bias to the output channels ``atoms``; when those are not channels (the
    weight was computed through a reshape that froze them, timm's ScaledStdConv2d), the
    bias is frozen too: left alone it would form a group of its own and be sliced."""
    bl = b.labels(bias)
    if not bl:
        return
    if atoms is None:
        b.freeze_labels(bl, where)
    elif bl[0] is None:
        b.freeze(atoms, where)
    else:
        b.tie(atoms, bl[0], where)


def _functional_conv_macs(node):
    weight = shape_of(arg(node, 1, "weight"))
    return numel(node) * math.prod(weight[1:]) if weight else 0


@register_function(
    F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
    macs=_functional_conv_macs,
)
def _functional_conv(b, node):
    x, w, bias = arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias")
    groups = arg(node, 6, "groups", 1)
    xl, wl, shape = b.labels(x), b.labels(w), out_shape(node)
    if xl is None or wl is None or shape is None or not isinstance(groups, int):
        return b.unhandled_op(node, "functional conv with unknown operands")
    spatial = len(b.shape(w)) - 2
    ch = _channel_dim(len(shape), spatial)
    b.freeze_labels(list(wl[2:]), f"kernel dims of the weight of '{node.name}'")
    out_atoms = wl[0] if wl[0] is not None else None
    if groups == 1 and wl[1] is not None:
        b.tie(wl[1], xl[ch], f"node '{node.name}' weight input dim")
    else:
        b.freeze_labels([xl[ch], wl[1], wl[0]], f"grouped functional conv '{node.name}'")
    _bias_tie(b, bias, out_atoms, f"bias of '{node.name}'")
    return list(xl[:ch]) + [out_atoms] + [None] * spatial


def _functional_linear_macs(node):
    weight = shape_of(arg(node, 1, "weight"))
    return numel(node) * weight[1] if weight and len(weight) == 2 else 0


@register_function(F.linear, macs=_functional_linear_macs)
def _functional_linear(b, node):
    x, w, bias = arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias")
    xl, wl = b.labels(x), b.labels(w)
    if xl is None or wl is None or len(wl) != 2:
        return b.unhandled_op(node, "functional linear with unknown operands")
    if wl[1] is not None:
        b.tie(wl[1], xl[-1], f"node '{node.name}' weight input dim")
    else:
        b.freeze(xl[-1], f"linear '{node.name}' weight has a single input feature")
    _bias_tie(b, bias, wl[0], f"bias of '{node.name}'")
    return list(xl[:-1]) + [wl[0]]


@register_function(F.batch_norm, F.instance_norm)
def _functional_bn(b, node):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "batch_norm on a non-tensor")
    for t in node.all_input_nodes[1:]:
        tl = b.labels(t)
        if tl:
            if tl[0] is None:
                b.freeze(xl[1], f"batch_norm '{node.name}' with scalar statistics")
            else:
                b.tie(tl[0], xl[1], f"batch_norm '{node.name}'")
    if node.target is F.batch_norm and (arg(node, 5, "training", False) or arg(node, 1, "running_mean") is None):
        # statistics of this batch, over every dim but 1: channels there meet each other
        for dim, labels in enumerate(xl):
            if dim != 1:
                b.mark_inexact(labels, f"batch_norm '{node.name}' normalises across them")
    return list(xl)


def _rewrite_layer_norm_shape(node, ctx):
    """``normalized_shape`` is a literal in the graph (LayerNorm2d traced through)."""
    shape = arg(node, 1, "normalized_shape")
    xl = ctx.labels(node.args[0])
    if not isinstance(shape, (tuple, list)) or len(shape) != 1 or not xl or xl[-1] is None:
        return
    kept = ctx.kept_count(xl[-1])
    if kept != shape[0]:
        if len(node.args) > 1:
            node.args = (node.args[0], (kept,), *node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "normalized_shape": (kept,)}


@register_function(F.layer_norm, rewrite=_rewrite_layer_norm_shape)
def _functional_ln(b, node):
    xl = list(b.labels(node.args[0]))
    shape = arg(node, 1, "normalized_shape")
    if not isinstance(shape, (tuple, list)) or len(shape) != 1:
        b.freeze_labels(xl, f"layer_norm '{node.name}' over several dims")
        return xl
    b.mark_inexact(xl[-1], f"layer_norm '{node.name}' normalises across channels")
    for t in node.all_input_nodes[1:]:
        tl = b.labels(t)
        if tl:
            b.tie(tl[0], xl[-1], f"layer_norm '{node.name}'") if tl[0] is not None else None
    return xl
