"""torchvision's Swin: the ``torch.fx.wrap``'d ``shifted_window_attention``,
``_get_relative_position_bias`` and ``_patch_merging_pad`` (Swin V1 and V2).

torchvision wraps these functions because they branch on sizes, so they reach the graph
as single ``call_function`` nodes that take the block's weights as arguments
(``get_attr`` tensors, sliced by surgery like any other) and read their widths from
those tensors at run time.

Channels. ``shifted_window_attention`` takes ``C`` from its INPUT and reshapes ``qkv``
to ``(3, num_heads, C // num_heads)`` and the output back to ``C``: the input channels,
the q/k/v channels of every head and the output are one channel space, as for
``nn.MultiheadAttention`` (``attention.py``). That space is cut per head dim
(``heads="dims"``: the head count stays) or per whole head (``heads="whole"``: the
``num_heads`` argument is rewritten and the per-head tensors, the relative-position-bias
table's head column and V2's ``logit_scale``, are sliced with their head). With head dims
cut, V1's ``q * (C // num_heads) ** -0.5`` would see the slim head dim: surgery rescales
the slim q rows by ``sqrt(Dh'/Dh)`` so the softmax temperature stays. V2's cosine
attention normalises q and k over the head dim, which masking commutes with.

Relative positions (the table's rows, the bias's ``N x N`` window) and the spatial dims
are never channels. ``_patch_merging_pad`` lays four spatial neighbours side by side along
channels (``C -> 4C``): each copy keeps the input's labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

from .attention import consumer_dim, couple_heads, heads_mode
from .common import arg, norm_dim, out_shape, shape_of
from .registry import register_function

_MODULE = "torchvision.models.swin_transformer"
_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size",
         "num_heads")


def _args(node: fx.Node) -> dict:
    """The call's arguments by name (positional or keyword)."""
    got = {name: arg(node, i, name) for i, name in enumerate(_ARGS)}
    for name in ("qkv_bias", "proj_bias", "logit_scale"):
        got[name] = node.kwargs.get(name)
    return got


def _head_column(b, labels, dim: int, heads: np.ndarray | None, what: str, mode: str) -> None:
    """A per-head tensor: sliced with whole heads, whole when head dims are cut."""
    if labels is None:
        return
    for d, arr in enumerate(labels):
        if d != dim:
            b.freeze(arr, f"{what}: relative positions are not channels")
    col = labels[dim] if dim < len(labels) else None
    if col is None:
        return
    if mode == "whole" and heads is not None:
        b.union(col, heads)
    else:
        b.freeze(col, f"{what}: the head count stays when head dims are cut")


def _own_weight(value, node: fx.Node) -> bool:
    """A ``get_attr`` tensor read by this call only (or no tensor at all)."""
    if value is None:
        return True
    return isinstance(value, fx.Node) and value.op == "get_attr" and set(value.users) == {node}


# ------------------------------------------------------------------ attention
def _attention_macs(node):
    a = _args(node)
    x, qkv, proj = shape_of(a["input"]), shape_of(a["qkv_weight"]), shape_of(a["proj_weight"])
    window = a["window_size"]
    if not (x and qkv and proj) or not isinstance(window, (list, tuple)):
        return 0
    batch, height, width, channels = x[0], x[-3], x[-2], x[-1]
    padded = math.ceil(height / window[0]) * window[0] * math.ceil(width / window[1]) * window[1]
    tokens = batch * padded
    per_window = window[0] * window[1]
    inner = qkv[0] // 3
    return (tokens * channels * qkv[0]  # qkv projection
            + 2 * tokens * per_window * inner  # q @ k^T and probs @ v, every head
            + tokens * inner * proj[0])  # output projection


def _kept_heads(node: fx.Node, ctx) -> tuple[int, int, int] | None:
    """(dense heads, slim heads, slim head dim) of a call, from the kept input channels."""
    a = _args(node)
    labels = ctx.labels(a["input"])
    heads = a["num_heads"]
    if not isinstance(labels, list) or labels[-1] is None or not isinstance(heads, int):
        return None
    rows = ctx.kept_mask(labels[-1]).reshape(heads, -1)  # (H, Dh)
    counts = rows.sum(1)
    kept = counts[counts > 0]
    if len(set(kept.tolist())) != 1:
        raise AssertionError(f"'{node.name}': heads keep different numbers of dims {counts}")
    return heads, len(kept), int(kept[0])


def _rewrite_attention(node: fx.Node, ctx) -> None:
    """Slim graph: the kept head count; with head dims cut (V1), q rescaled so that
    ``(C' // H) ** -0.5`` gives the dense temperature."""
    got = _kept_heads(node, ctx)
    if got is None:
        return
    heads, new_heads, new_dim = got
    if new_heads != heads:
        if len(node.args) > 5:
            node.args = (*node.args[:5], new_heads, *node.args[6:])
        else:
            node.kwargs = {**node.kwargs, "num_heads": new_heads}
    a = _args(node)
    dense_dim = len(ctx.labels(a["input"])[-1]) // heads
    if new_dim == dense_dim or a["logit_scale"] is not None:
        return
    scale = math.sqrt(new_dim / dense_dim)
    root = node.graph.owning_module
    for name in ("qkv_weight", "qkv_bias"):
        value = a[name]
        if isinstance(value, fx.Node) and value.op == "get_attr":
            owner, _, attr = value.target.rpartition(".")
            tensor = getattr(root.get_submodule(owner) if owner else root, attr)
            with torch.no_grad():
                tensor[: tensor.shape[0] // 3] *= scale
        elif value is not None:
            raise AssertionError(f"'{node.name}': {name} is computed; cannot keep the q scale")


@register_function(f"{_MODULE}.shifted_window_attention", rewrite=_rewrite_attention,
                   macs=_attention_macs)
def _shifted_window_attention(b, node):
    a = _args(node)
    x, heads = a["input"], a["num_heads"]
    xl, shape = b.labels(x), b.shape(x)
    if xl is None or shape is None or len(shape) != 4 or not isinstance(heads, int):
        return b.unhandled_op(node, "shifted_window_attention with unknown operands")
    where = f"shifted_window_attention '{node.name}'"
    for arr in xl[:3]:  # batch, rows, columns: windows and shifts mix them
        b.freeze(arr, f"{where} mixes along a channel dim")
    inner = xl[-1]
    tensors = ("qkv_weight", "proj_weight", "qkv_bias", "proj_bias")
    if inner is None:  # the function reads C from its input: nothing inside can shrink
        for name in tensors + ("relative_position_bias", "logit_scale"):
            b.freeze_labels(b.labels(a[name]), f"{where}: its input width is not a channel dim")
        return [None] * 4
    mode = heads_mode(b)
    couple_heads(b, inner, heads, mode)
    if mode == "dims" and a["logit_scale"] is None and not all(
            _own_weight(a[name], node) for name in ("qkv_weight", "qkv_bias")):
        # the slim q rows get rescaled in place (see _rewrite_attention)
        b.freeze(inner, f"{where}: q's weight is computed or shared, its scale cannot be kept")
    triple = np.concatenate([inner, inner, inner])  # q, k, v rows
    for name, dims in (("qkv_weight", (triple, inner)), ("proj_weight", (inner, inner)),
                       ("qkv_bias", (triple,)), ("proj_bias", (inner,))):
        labels = b.labels(a[name])
        if labels is None:
            continue
        for d, want in enumerate(dims):
            b.tie(want, labels[d], f"{where} ({name})")
    consumer_dim(b, a["qkv_weight"], 1)
    consumer_dim(b, a["proj_weight"], 1)
    per_head = inner.reshape(heads, -1)[:, 0]
    _head_column(b, b.labels(a["relative_position_bias"]), 1, per_head,
                 f"relative position bias of {where}", mode)
    _head_column(b, b.labels(a["logit_scale"]), 0, per_head, f"logit_scale of {where}", mode)
    return [None, None, None, inner]


# ------------------------------------------------------------------ relative position bias
@register_function(f"{_MODULE}._get_relative_position_bias")
def _relative_position_bias(b, node):
    """``table[index].view(N, N, H).permute(2, 0, 1).unsqueeze(0)``: (L, H) -> (1, H, N, N)."""
    table = arg(node, 0, "relative_position_bias_table")
    tl, shape = b.labels(table), out_shape(node)
    if tl is None or shape is None or len(tl) != 2:
        return b.unhandled_op(node, "relative position bias of an unknown table")
    b.freeze(tl[0], f"relative positions of '{node.name}' are not channels")
    if isinstance(table, fx.Node) and table.op == "get_attr":
        consumer_dim(b, table, 1)  # a member of the head class, never its producer
    return [None, tl[1], None, None]


# ------------------------------------------------------------------ patch merging
@register_function(f"{_MODULE}._patch_merging_pad")
def _patch_merging_pad(b, node):
    """Pad H, W to even, then concatenate the four 2x2 neighbours along channels."""
    x = node.args[0]
    xl, shape = b.labels(x), out_shape(node)
    if xl is None or shape is None or len(xl) < 3:
        return b.unhandled_op(node, "patch merging of an unknown tensor")
    for d in (-3, -2):
        b.freeze(xl[norm_dim(d, len(xl))], f"patch merging '{node.name}' pads and strides it")
    channels = xl[-1]
    last = np.concatenate([channels] * 4) if channels is not None else None
    return list(xl[:-3]) + [None, None, last]


__all__: list[str] = []
