"""Attention: ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, ``unbind``,
``einsum``, ``addmm``/``baddbmm``.

Heads. A projection of width ``C`` viewed as ``(H, Dh)`` (``view(B, T, H, C // H)``) is
cut in one of two ways, chosen by the analysis option ``heads`` (see
``layout.reshape_labels``): ``"dims"`` (the default, as Torch-Pruning's
``prune_head_dims``) makes one class per head dim shared by every head, so all heads keep
the same dims and stay rectangular; ``"whole"`` makes one class per head, so whole heads
go. ``"both"`` is not one partition (a head AND a dim is a product of two classes):
``fxprune.composed`` runs ``"whole"`` then ``"dims"`` and composes the two; an op rule
never sees it. q and k meet in the contraction ``q @ k^T`` (their dims are cut together); v and the
output projection form their own group; with GQA the batch-dim merge of ``q @ k^T``
puts a kv head together with the q heads that share it.

Exactness. Attention mixes tokens, never channels: with q/k dims or whole heads removed,
the slim attention equals the dense one with those channels zeroed, as long as the
softmax temperature is kept. ``scaled_dot_product_attention`` with the default scale
(``1/sqrt(E)`` of the *current* E) gets the dense scale written into the slim graph;
``nn.MultiheadAttention`` gets its q rows rescaled by ``sqrt(Dh'/Dh)``.

``nn.MultiheadAttention`` is a leaf: its forward needs ``in_proj``'s width to equal its
input width (and the fast path its output width too), so the input, the inner q/k/v
channels and the output are one channel space, like Torch-Pruning does.
"""

from __future__ import annotations

import math
import operator
import string

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..analysis import Builder, plain_labels
from ..errors import ConfigError
from .common import arg, merge_broadcast, norm_dim, numel, out_shape, shape_of
from .registry import ModuleRule, register_function, register_method, register_module

HEADS_MODES = ("dims", "whole", "both")


def check_heads(heads: str) -> str:
    if heads not in HEADS_MODES:
        raise ConfigError(f"heads must be one of {', '.join(HEADS_MODES)}, got {heads!r}")
    return heads


def heads_mode(b: Builder) -> str:
    mode = b.options.get("heads", "dims")
    if mode not in ("dims", "whole"):
        raise ConfigError(f"one analysis cuts heads per dim or whole, not {mode!r}: heads='both' "
                          "is two composed passes (fxprune.analyze / fxprune.prune handle it)")
    return mode


def couple_heads(b: Builder, atoms: np.ndarray, heads: int, mode: str) -> None:
    """Cut a ``(heads * head_dim)`` channel array per head dim or per whole head."""
    rows = atoms.reshape(heads, -1)  # (H, Dh)
    if mode == "whole":
        rows = rows.T
    b.union(np.broadcast_to(rows[:1], rows.shape).ravel(), rows.ravel())


def contract(b: Builder, node: fx.Node, x: np.ndarray | None, y: np.ndarray | None) -> None:
    """Two dims summed against each other: cut together, or frozen against a plain dim."""
    if x is not None and y is not None:
        b.union(x, y)
    else:
        for arr in (x, y):
            b.freeze(arr, f"'{node.name}' contracts channels against a plain dim")


def consumer_dim(b: Builder, value, dim: int) -> None:
    """A ``get_attr`` weight read along its INPUT dim (addmm's ``mat2`` rows) is a
    member of that class, not a producer of it."""
    if isinstance(value, fx.Node) and value.op == "get_attr":
        space = b.spaces.get(f"{value.target}#{dim}")
        if space is not None:
            space.producer = False


# ------------------------------------------------------------------ unbind
@register_function(torch.unbind)
@register_method("unbind")
def _unbind(b, node):
    x = node.args[0]
    xl, shape = b.labels(x), b.shape(x)
    dim = arg(node, 1, "dim", 0)
    if xl is None or shape is None or not isinstance(dim, int):
        return b.unhandled_op(node, "unbind of a non-tensor")
    dim = norm_dim(dim, len(shape))
    b.freeze(xl[dim], f"unbind at '{node.name}' indexes channels one by one")
    piece = list(xl[:dim]) + list(xl[dim + 1:])
    return tuple(list(piece) for _ in range(shape[dim]))


# ------------------------------------------------------------------ scaled dot product
def _sdpa_macs(node):
    q, v = shape_of(node.args[0]), shape_of(arg(node, 2, "value"))
    k = shape_of(arg(node, 1, "key"))
    if not (q and k and v):
        return 0
    batch = math.prod(out_shape(node)[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])  # q @ k^T, then probs @ v


def _rewrite_sdpa_scale(node: fx.Node, ctx) -> None:
    """The default scale is 1/sqrt(E) of the slim E: write the dense one."""
    q = node.args[0]
    ql, shape = ctx.labels(q), shape_of(q)
    if ql is None or shape is None or ql[-1] is None or arg(node, 7, "scale") is not None:
        return
    if ctx.kept_count(ql[-1]) != shape[-1]:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(shape[-1])}


@register_function(F.scaled_dot_product_attention, rewrite=_rewrite_sdpa_scale, macs=_sdpa_macs)
def _sdpa(b, node):
    q, k, v = node.args[0], arg(node, 1, "key"), arg(node, 2, "value")
    mask = arg(node, 3, "attn_mask")
    ql, kl, vl, shape = b.labels(q), b.labels(k), b.labels(v), out_shape(node)
    if ql is None or kl is None or vl is None or shape is None or arg(node, 8, "enable_gqa"):
        return b.unhandled_op(node, "scaled_dot_product_attention with unknown operands")
    contract(b, node, ql[-1], kl[-1])
    for lab in (ql[-2], kl[-2], vl[-2]):  # token dims
        b.freeze(lab, f"attention at '{node.name}' mixes along a channel dim")
    operands = [(b.shape(t)[:-2], b.labels(t)[:-2]) for t in (q, k, v)]
    ml = b.labels(mask)
    if ml is not None and b.shape(mask) is not None:
        b.freeze_labels(list(ml[-2:]), f"attention mask of '{node.name}'")
        operands.append((b.shape(mask)[:-2], ml[:-2]))
    operands = [(s, lab) for s, lab in operands if len(s)]
    return merge_broadcast(b, node, operands, shape[:-2]) + [ql[-2], vl[-1]]


# ------------------------------------------------------------------ nn.MultiheadAttention
def _long(index) -> torch.Tensor:
    return torch.as_tensor(index, dtype=torch.long)


@register_module(nn.MultiheadAttention)
class MultiheadAttention(ModuleRule):
    """Spaces: ``embed_dim`` (query input = inner q/k/v channels = output, one channel
    space, see the module docstring), ``kdim``/``vdim`` (key/value inputs when they
    differ), ``out_proj.out_features`` (owned by ``out_proj``: the producer scorers read)."""

    def propagate(self, b, node, m, name):
        query, key, value = (arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
        labels = [b.labels(t) for t in (query, key, value)]
        shape = b.shape(query)
        if any(lab is None for lab in labels) or shape is None or len(shape) != 3:
            return b.unhandled_op(node, "MultiheadAttention with unbatched or unknown inputs")
        ql, kl, vl = labels
        inner = b.module_space(name, "embed_dim", m.embed_dim, producer=False)
        out = b.module_space(f"{name}.out_proj", "out_features", m.embed_dim, producer=True)
        b.union(inner, out)
        couple_heads(b, inner, m.num_heads, heads_mode(b))
        b.tie(inner, ql[-1], f"{name}.embed_dim")
        if m._qkv_same_embed_dim:
            b.tie(inner, kl[-1], f"{name}.embed_dim (key)")
            b.tie(inner, vl[-1], f"{name}.embed_dim (value)")
        else:
            b.tie(b.module_space(name, "kdim", m.kdim, producer=False), kl[-1], f"{name}.kdim")
            b.tie(b.module_space(name, "vdim", m.vdim, producer=False), vl[-1], f"{name}.vdim")
        token = 1 if m.batch_first else 0
        batch = 1 - token
        for lab in (ql, kl, vl):
            b.freeze(lab[token], f"'{name}' attends along a channel dim")
        b.union(*[lab[batch] for lab in (ql, kl, vl)]) if all(
            lab[batch] is not None for lab in (ql, kl, vl)) else b.freeze_labels(
            [lab[batch] for lab in (ql, kl, vl)], f"'{name}' batch dim")
        for mask_name, index in (("key_padding_mask", 3), ("attn_mask", 5)):
            mask = arg(node, index, mask_name)
            b.freeze_labels(b.labels(mask), f"{mask_name} of '{name}'")
        if any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in node.users):
            # the returned weights are averaged over heads: fewer heads change them
            b.freeze(inner, f"attention weights of '{name}' are used")
        out_labels = list(ql)
        out_labels[-1] = inner
        shapes = node.meta.get("fxprune_shape")
        weights = shapes[1] if isinstance(shapes, (tuple, list)) and len(shapes) > 1 else None
        return (out_labels, plain_labels(weights))

    def macs(self, node, m):
        query, key = shape_of(arg(node, 0, "query")), shape_of(arg(node, 1, "key"))
        if not query or not key:
            return 0
        token = 1 if m.batch_first else 0
        n_batch, L, S = query[1 - token], query[token], key[token]
        E = m.embed_dim
        proj = n_batch * (L * E * E + S * E * m.kdim + S * E * m.vdim + L * E * E)
        return proj + n_batch * 2 * L * S * E  # q @ k^T and probs @ v over all heads

    def slice_(self, m, keep):
        E = m.embed_dim
        idx = keep.get("embed_dim", np.arange(E))
        head_dim = E // m.num_heads
        kept_heads = np.unique(idx // head_dim)
        new_heads, new_e = len(kept_heads), len(idx)
        if new_e % new_heads:
            raise AssertionError(f"MultiheadAttention: {new_e} channels over {new_heads} heads")
        new_head_dim = new_e // new_heads
        rows = _long(np.concatenate([idx, idx + E, idx + 2 * E]))
        q_scale = math.sqrt(new_head_dim / head_dim)  # keep the softmax temperature
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                w = m.in_proj_weight.data[rows][:, _long(idx)].clone()
                w[:new_e] *= q_scale
                m.in_proj_weight = nn.Parameter(w)
            else:
                for pname, cols in (("q_proj_weight", idx), ("k_proj_weight", keep.get("kdim")),
                                    ("v_proj_weight", keep.get("vdim"))):
                    w = getattr(m, pname).data[_long(idx)]
                    w = w[:, _long(cols)] if cols is not None else w
                    if pname == "q_proj_weight":
                        w = w * q_scale
                    setattr(m, pname, nn.Parameter(w.clone()))
                m.kdim = m.k_proj_weight.shape[1]
                m.vdim = m.v_proj_weight.shape[1]
            if m.in_proj_bias is not None:
                bias = m.in_proj_bias.data[rows].clone()
                bias[:new_e] *= q_scale
                m.in_proj_bias = nn.Parameter(bias)
            for pname in ("bias_k", "bias_v"):
                if getattr(m, pname) is not None:
                    setattr(m, pname, nn.Parameter(getattr(m, pname).data[..., _long(idx)].clone()))
            out = m.out_proj
            out.weight = nn.Parameter(out.weight.data[:, _long(idx)].clone())
            out.in_features = new_e
        m.embed_dim, m.num_heads, m.head_dim = new_e, new_heads, new_head_dim
        if m._qkv_same_embed_dim:
            m.kdim = m.vdim = new_e

    def masked(self, m, masks: dict[str, np.ndarray]) -> nn.Module:
        """The dense module with the pruned inner channels zeroed: the oracle's
        reference for this leaf (``fxprune.verify``)."""
        import copy

        ref = copy.deepcopy(m)
        keep = masks.get("embed_dim")
        if keep is None or keep.all():
            return ref
        drop = torch.as_tensor(np.flatnonzero(~keep), dtype=torch.long)
        E = m.embed_dim
        with torch.no_grad():
            for pname in ("in_proj_weight", "in_proj_bias"):
                p = getattr(ref, pname)
                if p is not None:
                    for part in range(3):
                        p[drop + part * E] = 0
            for pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(ref, pname, None)
                if p is not None:
                    p[drop] = 0
            for pname in ("bias_k", "bias_v"):
                p = getattr(ref, pname)
                if p is not None:
                    p[..., drop] = 0
            ref.out_proj.weight[:, drop] = 0
        return ref


# ------------------------------------------------------------------ einsum
def _einsum_operands(node: fx.Node):
    equation = node.args[0]
    ops = list(node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = list(ops[0])
    if not isinstance(equation, str):
        return None
    shapes = [shape_of(t) for t in ops]
    if any(s is None for s in shapes):
        return None
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ops):
        return None
    spare = [c for c in string.ascii_letters if c not in equation]
    ell_dims = max((len(s) - len(t.replace("...", "")) for s, t in zip(shapes, terms)
                    if "..." in t), default=0)
    ell = "".join(spare[:ell_dims])
    expanded = []
    for s, t in zip(shapes, terms):
        if "..." in t:
            n = len(s) - len(t.replace("...", ""))
            t = t.replace("...", ell[ell_dims - n:])
        if len(t) != len(s):
            return None
        expanded.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: every letter used once, sorted, after the ellipsis
        counts = "".join(expanded)
        out = ell + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in ell))
    return ops, expanded, shapes, out


def _einsum_macs(node):
    got = _einsum_operands(node)
    if got is None or len(got[0]) < 2:
        return 0
    _, terms, shapes, _ = got
    sizes: dict[str, int] = {}
    for t, s in zip(terms, shapes):
        for c, n in zip(t, s):
            sizes[c] = max(sizes.get(c, 1), n)
    return math.prod(sizes.values())


@register_function(torch.einsum, macs=_einsum_macs)
def _einsum(b, node):
    got = _einsum_operands(node)
    shape = out_shape(node)
    if got is None or shape is None:
        return b.unhandled_op(node, "einsum with an equation fxprune cannot read")
    ops, terms, shapes, out = got
    letters: dict[str, list] = {}
    for t, s, op in zip(terms, shapes, ops):
        lab = b.labels(op)
        for c, n, arr in zip(t, s, lab):
            letters.setdefault(c, []).append((n, arr))
    merged: dict[str, np.ndarray | None] = {}
    for c, dims in letters.items():
        size = max(n for n, _ in dims)
        arrays = [arr for n, arr in dims if arr is not None and n == size]
        plain = any(arr is None and n == size for n, arr in dims)
        for a in arrays[1:]:
            b.union(arrays[0], a)
        if arrays and plain:
            b.freeze(arrays[0], f"einsum '{node.name}' meets a non-channel dim on '{c}'")
        merged[c] = arrays[0] if arrays else None
    return [merged.get(c) for c in out]


# ------------------------------------------------------------------ addmm / baddbmm
def _addmm_macs(node):
    a, c = shape_of(node.args[1]), shape_of(node.args[2])
    return numel(node) * a[-1] if a and c else 0


@register_function(torch.addmm, torch.baddbmm, macs=_addmm_macs)
@register_method("addmm", "baddbmm", macs=_addmm_macs)
def _addmm(b, node):
    """``beta * input + alpha * (mat1 @ mat2)`` (batched for baddbmm)."""
    base, m1, m2 = node.args[0], node.args[1], node.args[2]
    l1, l2, shape = b.labels(m1), b.labels(m2), out_shape(node)
    if l1 is None or l2 is None or shape is None:
        return b.unhandled_op(node, "addmm with unknown operands")
    contract(b, node, l1[-1], l2[-2])
    consumer_dim(b, m2, len(l2) - 2)
    batch = merge_broadcast(b, node, [(b.shape(m)[:-2], b.labels(m)[:-2]) for m in (m1, m2)],
                            shape[:-2])
    product = batch + [l1[-2], l2[-1]]
    operands = [(shape, product)]
    bl = b.labels(base)
    if bl is not None and b.shape(base) is not None:
        operands.append((b.shape(base), bl))
    return merge_broadcast(b, node, operands, shape)


__all__ = ["HEADS_MODES", "MultiheadAttention", "check_heads", "couple_heads", "heads_mode"]
