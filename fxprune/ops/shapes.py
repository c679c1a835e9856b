"""Size provenance: sizes read from tensors, carried through arithmetic, checked where used.

``x.size()``, ``x.shape`` and ``x.size(d)`` remember which (tensor, dim) they read
(``META_SIZE_OF``: a frozenset of ``(node name, dim)`` for a number, a tuple of those for
a size tuple). Provenance flows through Python arithmetic (``C // n_head``, ``B * T``),
tuple slices (``x.size()[:-1]``) and tuple concatenation (``... + (H, Dh)``).

Where a size is used, the slim graph must stay right:

* as the size of a CHANNEL dim of a view/reshape/expand: the slim graph gets the kept
  count as a constant (``rewrite_shape_args``), whatever expression computed it;
* as the size of a plain dim computed from channel counts only (``C // n_head`` when whole
  heads are cut): the slim graph gets the dense value as a constant;
* as the size of a plain dim that also depends on batch or tokens, or as a number in tensor math
  (``scores * q.size(-1) ** -0.5``), or by any other op: the channel dims it was read
  from are frozen (``guard_size_uses``), so it keeps its dense value. Never silently wrong.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..analysis import META_SIZE_OF, Builder
from ..trace import META_SHAPE

# ops that read sizes and check their own size arguments (the rest freeze what they use)
_SIZE_AWARE_METHODS = {"view", "reshape", "expand", "size", "new_empty"}
_SIZE_AWARE_FUNCTIONS = {torch.reshape, operator.getitem, getattr}


def provenance(value) -> frozenset | tuple:
    """Provenance of an argument: a frozenset for a number, a tuple of them for a size
    tuple (literal elements have none)."""
    if isinstance(value, fx.Node):
        return value.meta.get(META_SIZE_OF, frozenset())
    if isinstance(value, (tuple, list)):
        return tuple(_flat(provenance(v)) for v in value)
    return frozenset()


def _flat(p) -> frozenset:
    return frozenset().union(*p) if isinstance(p, tuple) else p


def size_arithmetic(node: fx.Node) -> None:
    """Record the provenance of a pure-Python node (no tensor in, no tensor out)."""
    if node.op == "call_function" and node.target in (operator.add, operator.iadd):
        left, right = (provenance(a) for a in node.args[:2])
        if isinstance(left, tuple) and isinstance(right, tuple):  # tuple concatenation
            node.meta[META_SIZE_OF] = left + right
            return
    deps = frozenset().union(*(_flat(provenance(a)) for a in node.args),
                             *(_flat(provenance(a)) for a in node.kwargs.values()))
    if deps:
        node.meta[META_SIZE_OF] = deps


def slice_provenance(node: fx.Node, source: fx.Node, index) -> None:
    """``sizes[i]`` and ``sizes[a:b]`` of a size tuple."""
    sizes = source.meta.get(META_SIZE_OF)
    if isinstance(sizes, tuple) and isinstance(index, (int, slice)):
        try:
            node.meta[META_SIZE_OF] = sizes[index]
        except IndexError:
            pass


def channel_sources(b: Builder, p) -> list:
    """Label arrays of the channel dims a provenance set was read from."""
    out = []
    for name, d in _flat(p):
        labels = b.labels(b.by_name.get(name))
        if isinstance(labels, list) and d < len(labels) and labels[d] is not None:
            out.append(labels[d])
    return out


def freeze_sources(b: Builder, value, why: str) -> bool:
    arrays = channel_sources(b, provenance(value))
    for arr in arrays:
        b.freeze(arr, why)
    return bool(arrays)


def guard_size_uses(b: Builder, node: fx.Node) -> None:
    """Called for every call node: an op that is not size-aware and reads a size taken
    from a channel dim freezes that dim (the slim graph would compute another number)."""
    if node.op == "call_method" and node.target in _SIZE_AWARE_METHODS:
        return
    if node.op == "call_function" and node.target in _SIZE_AWARE_FUNCTIONS:
        return
    if node.meta.get(META_SHAPE) is None and not any(
        isinstance(a.meta.get(META_SHAPE), tuple) for a in node.all_input_nodes
    ):
        return  # pure arithmetic on sizes: provenance flows on
    for a in node.all_input_nodes:
        if a.meta.get(META_SIZE_OF):
            freeze_sources(b, a, f"a size read from it is used by '{node.name}'")


def shape_args(node: fx.Node) -> tuple[list, bool]:
    """The size arguments of view/reshape/expand as a list, and whether they came as
    ONE computed tuple (a Node) rather than separate values / a literal tuple."""
    if node.op == "call_method":
        sizes = list(node.args[1:])
    else:
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")
        sizes = [shape]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        return list(sizes[0]), False
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and isinstance(
        sizes[0].meta.get(META_SIZE_OF), tuple
    ):
        return [sizes[0]], True
    return sizes, False


def check_shape_args(b: Builder, node: fx.Node, out: list) -> None:
    """Sizes read from channel dims may only size channel dims of the output (those are
    rewritten to constants); elsewhere they freeze their source."""
    sizes, computed = shape_args(node)
    per_dim = list(provenance(sizes[0])) if computed else [provenance(s) for s in sizes]
    if len(per_dim) != len(out):
        for s in sizes:
            freeze_sources(b, s, f"its size shapes '{node.name}' in a way fxprune cannot map")
        return
    for k, p in enumerate(per_dim):
        if out[k] is None and p:
            arrays = channel_sources(b, p)
            if len(arrays) == len(_flat(p)):
                continue  # read from channel counts only: the slim graph gets the dense value
            for arr in arrays:
                b.freeze(arr, f"its size is used for a non-channel dim of '{node.name}'")


def rewrite_shape_args(node: fx.Node, ctx) -> None:
    """Slim graph: every size on a channel dim of a view/reshape/expand becomes the kept
    count (constants and computed sizes alike; ``-1`` stays); a computed shape tuple
    is rebuilt element-wise."""
    shape = node.meta.get(META_SHAPE)
    labels = ctx.labels(node)
    if not isinstance(shape, tuple) or not isinstance(labels, list):
        return
    sizes, computed = shape_args(node)
    if computed:
        per_dim = list(provenance(sizes[0]))
        if len(per_dim) != len(shape):
            return
        sizes = _element_nodes(node, sizes[0], len(shape))
    else:
        per_dim = [provenance(s) for s in sizes]
    if len(sizes) != len(shape):
        return
    new = list(sizes)
    for d, s in enumerate(sizes):
        if isinstance(s, int) and s == -1:
            continue
        if labels[d] is None:
            if isinstance(s, fx.Node) and _reads_pruned(node, ctx, per_dim[d]):
                new[d] = shape[d]  # a plain dim sized from channel counts: keep its value
            continue
        kept = ctx.kept_count(labels[d])
        # a computed size stays computed unless its value would change (tokens may vary)
        if not isinstance(s, fx.Node) or kept != shape[d] or _reads_pruned(node, ctx, per_dim[d]):
            new[d] = kept
    if new == sizes and not computed:
        return
    if computed and all(isinstance(s, fx.Node) for s in new):
        _drop_unused(new)
        return
    if node.op == "call_method":
        node.args = (node.args[0], *new)
    elif len(node.args) > 1:
        node.args = (node.args[0], tuple(new), *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "shape": tuple(new)}
    if computed:
        _drop_unused(sizes)


def resolve_slice(p: slice, n: int, length: int) -> slice | None:
    """A slice whose bounds are computed (``x[..., : x.shape[-1] // 2]``), made static
    from the dense input length ``n`` and output length ``length``; None if ambiguous."""
    if p.step not in (None, 1):
        return None
    start, stop = p.start, p.stop
    if all(v is None or isinstance(v, int) for v in (start, stop)):
        return p
    if isinstance(start, fx.Node) and isinstance(stop, fx.Node):
        return None
    if start is None:
        return slice(0, length)
    if stop is None:
        return slice(n - length, n)
    if isinstance(start, int):
        start = start + n if start < 0 else start
        return slice(start, start + length)
    stop = stop + n if stop < 0 else min(stop, n)
    return slice(stop - length, stop)


def _reads_pruned(node: fx.Node, ctx, size_provenance) -> bool:
    """Whether a size value was read from a dim that loses channels."""
    sources = _flat(size_provenance)
    if not sources:
        return False
    by_name = {n.name: n for n in node.graph.nodes if n.name in {name for name, _ in sources}}
    for name, d in sources:
        labels = ctx.labels(by_name[name]) if name in by_name else None
        if (isinstance(labels, list) and d < len(labels) and labels[d] is not None
                and ctx.kept_count(labels[d]) < len(labels[d])):
            return True
    return False


def _element_nodes(node: fx.Node, whole: fx.Node, n: int) -> list:
    with node.graph.inserting_before(node):
        return [node.graph.call_function(operator.getitem, (whole, k)) for k in range(n)]


def _drop_unused(nodes: list) -> None:
    for n in nodes:
        if isinstance(n, fx.Node) and not n.users:
            n.graph.erase_node(n)


__all__ = [
    "check_shape_args",
    "freeze_sources",
    "guard_size_uses",
    "provenance",
    "resolve_slice",
    "rewrite_shape_args",
    "shape_args",
    "size_arithmetic",
    "slice_provenance",
]
