"""Layout ops: permute/transpose, view/reshape/flatten, expand, roll, cat/stack, split/chunk, indexing, channel shuffle."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ..analysis import META_SIZE_OF, Builder, Labels, plain_labels
from ..trace import META_SHAPE
from .attention import heads_mode
from .common import arg, elementwise, merge_elementwise, norm_dim, out_shape
from .registry import (
    ModuleRule,
    register_function,
    register_method,
    register_module,
)
from .shapes import (
    check_shape_args,
    freeze_sources,
    resolve_slice,
    rewrite_shape_args,
    slice_provenance,
)


# ------------------------------------------------------------------ layout family
def _permute_labels(b, node, perm):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "permute of a non-tensor")
    return [xl[norm_dim(p, len(xl))] for p in perm]


@register_function(torch.permute)
@register_method("permute")
def _permute(b, node):
    dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    if not all(isinstance(d, int) for d in dims):
        return b.unhandled_op(node, "permute with non-constant dims")
    return _permute_labels(b, node, dims)


@register_function(torch.transpose, torch.swapaxes, torch.swapdims)
@register_method("transpose", "swapaxes", "swapdims")
def _transpose(b, node):
    xl = b.labels(node.args[0])
    d0, d1 = arg(node, 1, "dim0"), arg(node, 2, "dim1")
    if xl is None or not isinstance(d0, int) or not isinstance(d1, int):
        return b.unhandled_op(node, "transpose with non-constant dims")
    perm = list(range(len(xl)))
    a, c = norm_dim(d0, len(xl)), norm_dim(d1, len(xl))
    perm[a], perm[c] = perm[c], perm[a]
    return _permute_labels(b, node, perm)


@register_function(torch.t)
@register_method("t")
def _t(b, node):
    xl = b.labels(node.args[0])
    return list(reversed(xl)) if xl is not None else b.unhandled_op(node, "t of a non-tensor")


def _reshape_groups(a: tuple, c: tuple) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of input dims and output dims with equal products."""
    i = j = 0
    groups = []
    while i < len(a) or j < len(c):
        gi, gj, pa, pc = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa *= a[i]
            i += 1
        if j < len(c):
            gj.append(j)
            pc *= c[j]
            j += 1
        while pa != pc:
            if pa < pc and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif j < len(c):
                gj.append(j)
                pc *= c[j]
                j += 1
            else:
                return []
        groups.append((gi, gj))
    return groups


def reshape_labels(b: Builder, node: fx.Node, in_shape: tuple, xl: Labels, shape: tuple) -> Labels:
    """Labels through a view/reshape/flatten: channels may merge with spatial dims
    (flatten into a Linear) or split (channel shuffle, heads). A split whose pieces all
    vary keeps the channel identity on its largest axis and cuts the other axes together,
    so the slim tensor stays rectangular."""
    groups = _reshape_groups(in_shape, shape)
    out: Labels = [None] * len(shape)
    if not groups:
        b.freeze_labels(xl, f"reshape at '{node.name}' could not be matched")
        return out
    for gi, gj in groups:
        labeled = [d for d in gi if xl[d] is not None]
        if not labeled:
            continue
        # dim 0 merged with a channel dim folds the batch in, unless it is 1 wide
        if len(labeled) > 1 or (0 in gi and any(in_shape[d] > 1 for d in gi if d != labeled[0])):
            b.freeze_labels(
                [xl[d] for d in labeled], f"reshape at '{node.name}' mixes channel dims"
            )
            continue
        if not gj:
            continue
        d0 = labeled[0]
        bshape = [in_shape[d] for d in gi]
        view = [1] * len(gi)
        view[gi.index(d0)] = in_shape[d0]
        joint = np.broadcast_to(xl[d0].reshape(view), bshape).reshape([shape[d] for d in gj])
        varying = [ax for ax in range(joint.ndim) if not _constant_along(joint, ax)]
        if len(varying) == 0:
            axis = int(np.argmax([shape[d] for d in gj]))
        elif len(varying) == 1:
            axis = varying[0]
        else:
            axis = max(varying, key=lambda ax: (joint.shape[ax], -ax))
            if len(in_shape) >= 3 and d0 == len(in_shape) - 1 and gj[-1] == len(shape) - 1:
                # a channels-last split of token features into heads: (B, T, H, Dh),
                # (B, T, 3, H, Dh); the user's `heads` option says which axis stays
                axis = varying[-1] if heads_mode(b) == "dims" else varying[-2]
            rows = np.moveaxis(joint, axis, -1).reshape(-1, joint.shape[axis])
            b.union(np.broadcast_to(rows[:1], rows.shape).ravel(), rows.ravel())
        first = np.moveaxis(joint, axis, 0).reshape(joint.shape[axis], -1)[:, 0]
        out[gj[axis]] = np.ascontiguousarray(first)
    return out


def _constant_along(arr: np.ndarray, axis: int) -> bool:
    if arr.shape[axis] <= 1:
        return True
    first = np.take(arr, [0], axis=axis)
    return bool((arr == first).all())




def _reshape(b, node):
    x = node.args[0]
    xl, in_shape, shape = b.labels(x), b.shape(x), out_shape(node)
    if xl is None or in_shape is None or shape is None:
        return b.unhandled_op(node, "reshape of a non-tensor")
    out = reshape_labels(b, node, in_shape, xl, shape)
    if node.target in ("view", "reshape", torch.reshape):
        check_shape_args(b, node, out)
    return out




register_function(torch.reshape, rewrite=rewrite_shape_args)(_reshape)
def _rewrite_unflatten(node: fx.Node, ctx) -> None:
    """``unflatten(x, dim, sizes)``: a size on a pruned output dim becomes its kept count."""
    x, dim, sizes = node.args[0], arg(node, 1, "dim"), arg(node, 2, "sizes")
    labels, shape = ctx.labels(node), out_shape(node)
    if labels is None or shape is None or not isinstance(dim, int):
        return
    if not isinstance(sizes, (tuple, list)) or not all(isinstance(v, int) for v in sizes):
        return
    start = norm_dim(dim, len(shape) - len(sizes) + 1)
    new = [ctx.kept_count(labels[start + k]) if v != -1 and labels[start + k] is not None else v
           for k, v in enumerate(sizes)]
    if new != list(sizes):
        node.args = (x, dim, tuple(new))
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dim", "sizes")}


register_function(torch.unflatten, rewrite=_rewrite_unflatten)(_reshape)
register_method("unflatten", rewrite=_rewrite_unflatten)(_reshape)
register_function(torch.flatten, torch.squeeze, torch.unsqueeze, torch.ravel)(_reshape)
register_method("view", "reshape", rewrite=rewrite_shape_args)(_reshape)
register_method("flatten", "squeeze", "unsqueeze", "ravel", "view_as", "reshape_as")(
    _reshape
)


@register_module(nn.Flatten)
class Flatten(ModuleRule):
    def propagate(self, b, node, m, name):
        return _reshape(b, node)


@register_method("expand", rewrite=rewrite_shape_args)
def _expand(b, node):
    xl, shape = b.labels(node.args[0]), out_shape(node)
    if xl is None or shape is None:
        return b.unhandled_op(node, "expand of a non-tensor")
    lead = len(shape) - len(xl)
    out = [None] * lead + [
        None if (xl[k] is None or len(xl[k]) != shape[lead + k]) else xl[k] for k in range(len(xl))
    ]
    check_shape_args(b, node, out)
    return out


register_method("expand_as")(elementwise)


@register_function(torch.roll)
@register_method("roll")
def _roll(b, node):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "roll of a non-tensor")
    dims = arg(node, 2, "dims")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (tuple, list)):
        b.freeze_labels(xl, f"roll without dims at '{node.name}'")
        return [None] * len(xl)
    out = list(xl)
    for d in dims:
        d = norm_dim(d, len(xl))
        b.freeze(out[d], f"roll along a channel dim at '{node.name}'")
    return out


# ------------------------------------------------------------------ concat / split
@register_function(torch.cat, torch.concat, torch.concatenate)
def _cat(b, node):
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    shape = out_shape(node)
    if not isinstance(tensors, (tuple, list)) or shape is None or not isinstance(dim, int):
        return b.unhandled_op(node, "cat with unknown operands")
    labels = [b.labels(t) for t in tensors]
    if any(lab is None for lab in labels):
        return b.unhandled_op(node, "cat of non-tensors")
    dim = norm_dim(dim, len(shape))
    out: Labels = [None] * len(shape)
    for d in range(len(shape)):
        if d == dim:
            parts = [lab[d] for lab in labels]
            if all(p is not None for p in parts):
                out[d] = np.concatenate(parts)
            else:
                for p in parts:
                    b.freeze(p, f"cat at '{node.name}' joins channels with a plain tensor")
        else:
            arrays = [lab[d] for lab in labels if lab[d] is not None]
            for a in arrays[1:]:
                b.union(arrays[0], a)
            if arrays and len(arrays) < len(labels):
                b.freeze(arrays[0], f"cat at '{node.name}' meets a non-channel dimension")
            out[d] = arrays[0] if arrays else None
    return out


@register_function(torch.stack)
def _stack(b, node):
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    shape = out_shape(node)
    if not isinstance(tensors, (tuple, list)) or shape is None or not isinstance(dim, int):
        return b.unhandled_op(node, "stack with unknown operands")
    dim = norm_dim(dim, len(shape))
    merged = merge_elementwise(
        b, node, list(tensors), tuple(s for i, s in enumerate(shape) if i != dim)
    )
    return merged[:dim] + [None] + merged[dim:]


def _split_sizes(node: fx.Node, in_shape: tuple) -> tuple[list[int], int] | None:
    """Sizes of the pieces of a split/chunk/unbind node along its dim."""
    shapes = node.meta.get(META_SHAPE)
    if not isinstance(shapes, (tuple, list)) or not shapes:
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    dim = arg(node, 2, "dim", 0)
    if not isinstance(dim, int):
        return None
    dim = norm_dim(dim, len(in_shape))
    if name == "unbind":
        return None
    return [s[dim] for s in shapes], dim


def _split(b, node):
    x = node.args[0]
    xl, in_shape = b.labels(x), b.shape(x)
    got = _split_sizes(node, in_shape) if in_shape else None
    if xl is None or got is None:
        return b.unhandled_op(node, "split with unknown sizes")
    sizes, dim = got
    outs, start = [], 0
    for size in sizes:
        lab = list(xl)
        if xl[dim] is not None:
            lab[dim] = xl[dim][start : start + size]
        outs.append(lab)
        start += size
    return tuple(outs)


def _rewrite_split(node: fx.Node, ctx) -> None:
    """Pieces of a pruned split/chunk become an explicit list of kept sizes."""
    x = node.args[0]
    xl = ctx.labels(x)
    in_shape = x.meta.get(META_SHAPE)
    got = _split_sizes(node, in_shape)
    if got is None or xl is None:
        return
    sizes, dim = got
    if xl[dim] is None:
        return
    new_sizes, start = [], 0
    for size in sizes:
        new_sizes.append(ctx.kept_count(xl[dim][start : start + size]))
        start += size
    if new_sizes == sizes and node.target in ("split", torch.split):
        return
    if node.op == "call_method":
        node.target = "split"
    else:
        node.target = torch.split
    node.args = (x, new_sizes)
    node.kwargs = {"dim": dim}


register_function(torch.split, torch.chunk, rewrite=_rewrite_split)(_split)
register_method("split", "chunk", rewrite=_rewrite_split)(_split)


def _getitem(b, node):
    src, index = node.args
    src_labels = b.labels(src)
    sizes = src.meta.get(META_SIZE_OF) if isinstance(src, fx.Node) else None
    if isinstance(sizes, tuple):
        slice_provenance(node, src, index)
    if src_labels is None:
        return None if node.meta.get(META_SHAPE) is None else b.unhandled_op(node, "getitem")
    if isinstance(src.meta.get(META_SHAPE), (tuple, list)) and not b.shape(src):
        # indexing a tuple of tensors (split output)
        return src_labels[index] if isinstance(index, int) else b.unhandled_op(node, "tuple slice")
    return _tensor_index(b, node, src_labels, index)


def _index_parts(index) -> list:
    return list(index) if isinstance(index, tuple) else [index]


def _tensor_index(b, node, xl, index):
    parts = _index_parts(index)
    out: Labels = []
    d = 0
    n_consumed = sum(1 for p in parts if p is not None and p is not Ellipsis)
    for p in parts:
        if p is Ellipsis:
            skip = len(xl) - n_consumed
            out.extend(xl[d : d + skip])
            d += skip
        elif p is None:
            out.append(None)
        elif isinstance(p, slice):
            if xl[d] is not None:
                shape = out_shape(node)
                if shape is not None and len(out) < len(shape):
                    p = resolve_slice(p, len(xl[d]), shape[len(out)]) or p
                if not all(v is None or isinstance(v, int) for v in (p.start, p.stop, p.step)) or (
                    p.step not in (None, 1)
                ):
                    b.freeze(xl[d], f"strided or dynamic slice of channels at '{node.name}'")
                    out.append(None)
                else:
                    out.append(xl[d][p])
            else:
                for bound in (p.start, p.stop):  # a channel count bounding a plain dim
                    freeze_sources(b, bound, f"its size bounds a slice at '{node.name}'")
                out.append(None)
            d += 1
        elif isinstance(p, int):
            b.freeze(xl[d], f"integer index into channels at '{node.name}'")
            d += 1
        else:  # tensors, lists: advanced indexing
            b.freeze_labels(xl, f"advanced indexing at '{node.name}'")
            return plain_labels(node.meta.get(META_SHAPE))
    out.extend(xl[d:])
    shape = out_shape(node)
    if shape is None or len(out) != len(shape):
        b.freeze_labels(xl, f"indexing at '{node.name}' not understood")
        return plain_labels(node.meta.get(META_SHAPE))
    return out


def _rewrite_getitem(node: fx.Node, ctx) -> None:
    src, index = node.args
    xl = ctx.labels(src)
    if not isinstance(xl, list) or not is_tensor_node(src):
        return
    parts = _index_parts(index)
    n_consumed = sum(1 for p in parts if p is not None and p is not Ellipsis)
    d, new_parts, changed = 0, [], False
    out_dim, shape = 0, node.meta.get(META_SHAPE)
    for p in parts:
        if p is Ellipsis:
            d += len(xl) - n_consumed
            out_dim += len(xl) - n_consumed
        elif isinstance(p, slice):
            prunable = xl[d] is not None and not ctx.graph.class_frozen[
                ctx.graph.atom_class[xl[d]]].all()  # token-like dims keep computed bounds
            if prunable and isinstance(shape, tuple):
                resolved = resolve_slice(p, len(xl[d]), shape[out_dim])  # computed bounds
                if resolved is not None and resolved != p:
                    p, changed = resolved, True  # the computed bounds go, constants replace them
            out_dim += 1
            static = all(v is None or isinstance(v, int) for v in (p.start, p.stop))
            if xl[d] is not None and static and (p.start is not None or p.stop is not None):
                arr = xl[d]
                start = ctx.kept_count(arr[: p.start]) if p.start is not None else None
                stop = ctx.kept_count(arr[: p.stop]) if p.stop is not None else None
                if p.start is not None and p.start < 0:
                    start = -ctx.kept_count(arr[p.start :])
                if p.stop is not None and p.stop < 0:
                    stop = -ctx.kept_count(arr[p.stop :])
                if (start, stop) != (p.start, p.stop):
                    p = slice(start, stop, p.step)
                    changed = True
            d += 1
        elif p is None:
            out_dim += 1
        else:
            d += 1
        new_parts.append(p)
    if changed:
        node.args = (src, tuple(new_parts) if isinstance(index, tuple) else new_parts[0])


def is_tensor_node(n: fx.Node) -> bool:
    s = n.meta.get(META_SHAPE)
    return isinstance(s, tuple) and all(isinstance(x, int) for x in s)


register_function(operator.getitem, rewrite=_rewrite_getitem)(_getitem)


# ------------------------------------------------------------------ shape queries etc.
def _no_labels(b, node):
    return None


def _size_query(b, node):
    """``x.size()``, ``x.size(d)``, ``x.shape``: no labels, but remember the source dims."""
    x = node.args[0]
    shape = b.shape(x)
    if shape is None:
        return
    if node.op == "call_function":  # getattr(x, name)
        if len(node.args) < 2 or node.args[1] != "shape":
            return
        d = None
    else:
        d = arg(node, 1, "dim")
    if isinstance(d, int):
        node.meta[META_SIZE_OF] = frozenset({(x.name, norm_dim(d, len(shape)))})
    elif d is None:
        node.meta[META_SIZE_OF] = tuple(frozenset({(x.name, i)}) for i in range(len(shape)))
    return


register_method("dim", "numel", "type_as_str", "data_ptr", "get_device")(_no_labels)
register_method("size")(_size_query)
register_function(getattr)(_size_query)
register_function(len, torch.numel)(_no_labels)




@register_module("torchvision.ops.misc.Permute")
class TVPermute(ModuleRule):
    def propagate(self, b, node, m, name):
        return _permute_labels(b, node, list(m.dims))


@register_module(nn.ChannelShuffle)
class ChannelShuffle(ModuleRule):
    """Same as view(N, g, C/g, ...) -> transpose(1, 2) -> view(N, C, ...)."""

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        if xl[1] is None:
            return xl
        rows = xl[1].reshape(m.groups, -1)
        b.union(np.broadcast_to(rows[:1], rows.shape).ravel(), rows.ravel())
        xl[1] = np.repeat(rows[0], m.groups)
        return xl
