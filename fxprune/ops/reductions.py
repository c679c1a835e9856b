"""Matmul, reductions over dims, softmax."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .common import arg, merge_broadcast, norm_dim, numel, out_shape, shape_of
from .registry import ModuleRule, register_function, register_method, register_module


# ------------------------------------------------------------------ matmul family
def _matmul_macs(node):
    a = shape_of(node.args[0])
    return numel(node) * a[-1] if a else 0  # out.numel * contracted size


@register_function(torch.matmul, operator.matmul, torch.mm, torch.bmm, macs=_matmul_macs)
@register_method("matmul", "mm", "bmm", "__matmul__", macs=_matmul_macs)
def _matmul(b, node):
    a, c = node.args[0], node.args[1]
    al, cl, shape = b.labels(a), b.labels(c), out_shape(node)
    if al is None or cl is None or shape is None or len(al) < 2 or len(cl) < 2:
        return b.unhandled_op(node, "matmul with vector or non-tensor operands")
    # contraction: a[..., k] with c[..., k, :]
    if al[-1] is not None and cl[-2] is not None:
        b.union(al[-1], cl[-2])
    else:
        b.freeze(al[-1], f"matmul '{node.name}' contracts against a plain dim")
        b.freeze(cl[-2], f"matmul '{node.name}' contracts against a plain dim")
    batch = [(b.shape(op)[:-2], b.labels(op)[:-2]) for op in (a, c)]
    return merge_broadcast(b, node, batch, shape[:-2]) + [al[-2], cl[-1]]


# ------------------------------------------------------------------ reductions
_SUM_LIKE = {"sum", "nansum"}
_MEAN_LIKE = {"mean", "nanmean", "std", "var", "logsumexp", "norm"}


def _reduction(kind: str):
    def propagate(b, node):
        x = node.args[0]
        xl, shape = b.labels(x), out_shape(node)
        if xl is None:
            return b.unhandled_op(node, f"{kind} of a non-tensor")
        n = len(xl)
        dims = arg(node, 1, "dim")
        if kind == "norm":
            dims = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else None)
        keepdim = bool(node.kwargs.get("keepdim", False))
        if dims is None:
            dims = list(range(n))
        elif isinstance(dims, int):
            dims = [dims]
        if not all(isinstance(d, int) for d in dims):
            return b.unhandled_op(node, f"{kind} over non-constant dims")
        dims = {norm_dim(d, n) for d in dims}
        for d in dims:
            if xl[d] is None:
                continue
            if kind in _SUM_LIKE or kind == "norm":
                continue  # zeros add nothing: removing channels is exact
            if kind in _MEAN_LIKE:
                b.mark_inexact(xl[d], f"{kind} across channels at '{node.name}'")
            else:
                b.freeze(xl[d], f"{kind} across channels at '{node.name}'")
        if shape is None:
            return None
        if keepdim or len(shape) == n:
            return [None if d in dims else xl[d] for d in range(n)]
        return [xl[d] for d in range(n) if d not in dims]

    return propagate


for _name, _fn in {
    "sum": torch.sum,
    "mean": torch.mean,
    "amax": torch.amax,
    "amin": torch.amin,
    "std": torch.std,
    "var": torch.var,
    "logsumexp": torch.logsumexp,
    "prod": torch.prod,
    "nansum": torch.nansum,
    "nanmean": torch.nanmean,
    "norm": torch.norm,
}.items():
    register_function(_fn)(_reduction(_name))
    register_method(_name)(_reduction(_name))


def _softmax(b, node):
    x = node.args[0]
    xl = b.labels(x)
    if xl is None:
        return b.unhandled_op(node, "softmax of a non-tensor")
    dim = arg(node, 1, "dim")
    if not isinstance(dim, int):
        return b.unhandled_op(node, "softmax without a constant dim")
    d = norm_dim(dim, len(xl))
    b.mark_inexact(xl[d], f"softmax across channels at '{node.name}'")
    return list(xl)


register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)(_softmax)
register_method("softmax", "log_softmax")(_softmax)


@register_module(nn.Softmax, nn.LogSoftmax)
class Softmax(ModuleRule):
    def propagate(self, b, node, m, name):
        xl = b.labels(node.args[0])
        if m.dim is None:
            return b.unhandled_op(node, "Softmax without dim")
        b.mark_inexact(xl[norm_dim(m.dim, len(xl))], f"softmax across channels at '{name}'")
        return list(xl)


@register_function(F.normalize)
def _normalize(b, node):
    return list(b.labels(node.args[0]))  # an L2 norm over zeros is unchanged: exact
