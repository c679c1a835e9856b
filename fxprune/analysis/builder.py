"""The analysis state: ``Builder`` collects spaces, couplings and frozen atoms while
the graph is walked; ``finish`` turns them into a ``ChannelGraph`` (connected
components over the coupling edges give classes, producer spaces give groups).

``walk`` visits the nodes in order and asks a ``dispatch`` callable for the labels of
every call node; the op registry (``fxprune.ops``, one layer up) passes its own, so the
analysis knows nothing about particular ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..trace import META_SHAPE
from .graph import (
    META_LABELS,
    ChannelGraph,
    ChannelGroup,
    Labels,
    Space,
    UnhandledOp,
    iter_arrays,
    plain_labels,
    target_name,
)


class Builder:
    """State that op rules write to while the graph is walked: atoms, spaces, couplings."""

    def __init__(self, gm: fx.GraphModule, options: dict[str, Any] | None = None):
        self.gm = gm
        # analysis settings op rules may read (e.g. how attention heads are cut)
        self.options: dict[str, Any] = dict(options or {})
        self.modules = dict(gm.named_modules())
        self.by_name = {n.name: n for n in gm.graph.nodes}
        self.leaf_calls = {n.target for n in gm.graph.nodes if n.op == "call_module"}
        self.next_atom = 0
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.inexact: list[tuple[np.ndarray, str]] = []
        self.spaces: dict[str, Space] = {}
        self.unhandled: list[UnhandledOp] = []

    # -- atoms and spaces -------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        atoms = np.arange(self.next_atom, self.next_atom + n, dtype=np.int64)
        self.next_atom += n
        return atoms

    def module_space(self, owner: str, attr: str, size: int, producer: bool,
                     weak: bool = False) -> np.ndarray:
        key = f"{owner}.{attr}" if owner else attr
        space = self.spaces.get(key)
        if space is None:
            space = Space(key, owner, attr, "module", -1, self.fresh(size), producer, weak)
            self.spaces[key] = space
        return space.atoms

    def param_space(self, qualname: str, dim: int, size: int, producer: bool = True) -> np.ndarray:
        key = f"{qualname}#{dim}"
        space = self.spaces.get(key)
        if space is None:
            space = Space(key, qualname, f"dim{dim}", "parameter", dim, self.fresh(size), producer,
                          weak=True)
            self.spaces[key] = space
        return space.atoms

    # -- couplings ----------------------------------------------------------------------
    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is b:
            return
        if a.shape != b.shape:
            raise AssertionError(f"union of label arrays of different shapes {a.shape} {b.shape}")
        self.edges_a.append(a)
        self.edges_b.append(b)

    def freeze(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is not None and len(atoms):
            self.frozen.append((atoms, reason))

    def freeze_labels(self, labels: Any, reason: str) -> None:
        for arr in iter_arrays(labels):
            self.freeze(arr, reason)

    def mark_inexact(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is not None and len(atoms):
            self.inexact.append((atoms, reason))

    def tie(self, space_atoms: np.ndarray, label: np.ndarray | None, where: str) -> None:
        """A space indexed by a tensor dimension: union, or freeze if that dim is plain."""
        if label is None:
            self.freeze(space_atoms, f"{where} reads a non-channel dimension")
        else:
            self.union(space_atoms, label)

    # -- node access --------------------------------------------------------------------
    @staticmethod
    def shape(arg: Any) -> tuple | None:
        if isinstance(arg, fx.Node):
            s = arg.meta.get(META_SHAPE)
            return s if isinstance(s, tuple) and all(isinstance(x, int) for x in s) else None
        return None

    @staticmethod
    def labels(arg: Any) -> Labels | None:
        if isinstance(arg, fx.Node):
            return arg.meta.get(META_LABELS)
        return None

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        out = []
        for a in node.all_input_nodes:
            if self.shape(a) is not None:
                out.append(a)
        return out

    def unhandled_op(self, node: fx.Node, reason: str) -> Labels | None:
        """Freeze every channel this node touches; its outputs carry no channel labels."""
        touched = False
        for a in node.all_input_nodes:
            lab = self.labels(a)
            if lab is not None and any(True for _ in iter_arrays(lab)):
                touched = True
                self.freeze_labels(lab, f"unhandled op at node '{node.name}' ({target_name(node)})")
        out_shape = node.meta.get(META_SHAPE)
        if touched or out_shape is not None:
            self.unhandled.append(UnhandledOp(node.name, target_name(node), reason))
        return plain_labels(out_shape)

    # -- finish -------------------------------------------------------------------------
    def finish(self) -> ChannelGraph:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self.next_atom
        if self.edges_a:
            a = np.concatenate(self.edges_a)
            b = np.concatenate(self.edges_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        ncls, atom_class = connected_components(adj, directed=False)
        # renumber classes by first atom appearance so ids follow graph order
        first = np.full(ncls, n, dtype=np.int64)
        np.minimum.at(first, atom_class, np.arange(n))
        order = np.argsort(first, kind="stable")
        rank = np.empty(ncls, dtype=np.int64)
        rank[order] = np.arange(ncls)
        atom_class = rank[atom_class]

        class_frozen = np.zeros(ncls, dtype=bool)
        class_reason: list[str | None] = [None] * ncls
        for atoms, reason in self.frozen:
            cls = np.unique(atom_class[atoms])
            for c in cls[~class_frozen[cls]]:
                class_reason[int(c)] = reason
            class_frozen[cls] = True
        class_inexact = np.zeros(ncls, dtype=bool)
        inexact_reason: dict[int, str] = {}
        for atoms, reason in self.inexact:
            cls = np.unique(atom_class[atoms])
            for c in cls[~class_inexact[cls]]:
                inexact_reason[int(c)] = reason
            class_inexact[cls] = True

        class_group = self._group_classes(atom_class, ncls)
        groups = self._make_groups(
            atom_class, class_group, class_frozen, class_reason, class_inexact, inexact_reason
        )
        return ChannelGraph(
            gm=self.gm,
            atom_class=atom_class,
            class_group=class_group,
            class_frozen=class_frozen,
            class_reason=class_reason,
            class_inexact=class_inexact,
            spaces=self.spaces,
            groups=groups,
            unhandled=self.unhandled,
        )

    def _group_classes(self, atom_class: np.ndarray, ncls: int) -> np.ndarray:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        has_producer = np.zeros(ncls, dtype=bool)
        for s in self.spaces.values():
            if s.producer:
                has_producer[atom_class[s.atoms]] = True
        ea, eb = [], []
        for s in self.spaces.values():
            cls = np.unique(atom_class[s.atoms])
            if not s.producer:
                cls = cls[~has_producer[cls]]
            if len(cls) > 1:
                ea.append(np.full(len(cls) - 1, cls[0]))
                eb.append(cls[1:])
        a = np.concatenate(ea) if ea else np.zeros(0, dtype=np.int64)
        b = np.concatenate(eb) if eb else np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(ncls, ncls))
        _, comp = connected_components(adj, directed=False)
        # number groups by their first class
        first = np.full(comp.max() + 1 if ncls else 0, ncls, dtype=np.int64)
        np.minimum.at(first, comp, np.arange(ncls))
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        return rank[comp]

    def _make_groups(self, atom_class, class_group, class_frozen, class_reason, class_inexact,
                     inexact_reason) -> list[ChannelGroup]:
        ngroups = int(class_group.max()) + 1 if len(class_group) else 0
        members: list[list[str]] = [[] for _ in range(ngroups)]
        for s in self.spaces.values():
            for g in np.unique(class_group[atom_class[s.atoms]]):
                members[int(g)].append(s.key)
        order = np.argsort(class_group, kind="stable")
        bounds = np.searchsorted(class_group[order], np.arange(ngroups + 1))
        groups = []
        for g in range(ngroups):
            cls = order[bounds[g]:bounds[g + 1]]
            frozen = cls[class_frozen[cls]]
            inexact = cls[class_inexact[cls]]
            groups.append(
                ChannelGroup(
                    id=g,
                    classes=cls,
                    members=members[g],
                    frozen_classes=len(frozen),
                    frozen_reason=class_reason[int(frozen[0])] if len(frozen) else None,
                    inexact_reason=inexact_reason.get(int(inexact[0])) if len(inexact) else None,
                )
            )
        return groups


Dispatch = Callable[[Builder, fx.Node], Any]


def walk(gm: fx.GraphModule, dispatch: Dispatch, options: dict[str, Any] | None = None
         ) -> ChannelGraph:
    """Label every node of a shape-annotated GraphModule (from ``trace_model``) in graph
    order and return the analysis. ``dispatch(builder, node)`` returns the labels of a
    call node; it is the op registry's (``fxprune.ops.dispatch``): this layer knows no op."""
    b = Builder(gm, options)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            labels = plain_labels(node.meta.get(META_SHAPE))
        elif node.op == "get_attr":
            labels = _get_attr_labels(b, node)
        elif node.op == "output":
            b.freeze_labels(
                [b.labels(a) for a in _flatten_nodes(node.args)], "reaches the model output"
            )
            labels = None
        else:
            labels = dispatch(b, node)
        node.meta[META_LABELS] = labels
    return b.finish()


def _get_attr_labels(b: Builder, node: fx.Node) -> Labels | None:
    value = _fetch_attr(b.gm, node.target)
    if not isinstance(value, torch.Tensor):
        return None
    if not value.is_floating_point():
        return [None] * value.dim()
    owner = node.target.rpartition(".")[0]
    if owner in b.leaf_calls:
        # a parameter of a module called as a leaf (EdgeNeXt reads token_projection.weight
        # for its dtype): the module's rule slices it; a second space would slice it twice
        return [None] * value.dim()
    # buffers (masks, rotary tables) and vectors (gammas, biases) are sliced with their
    # channels but never score them (an additive -inf mask would give non-finite scores)
    producer = isinstance(value, nn.Parameter) and value.dim() > 1
    # a conv weight's kernel dims are never channels: plain, so a reshape may merge them
    # with the input channels (weight standardisation, timm's ScaledStdConv2d)
    # (the GraphModule holds a traced-through module as a plain Module: its class is in
    # the node's module stack)
    owner_class = next((cls for path, cls in (node.meta.get("nn_module_stack") or {}).values()
                        if path == owner), type(b.modules.get(owner)))
    is_conv_weight = node.target.endswith(".weight") and issubclass(owner_class, _CONVS)
    return [
        b.param_space(node.target, d, size, producer) if size > 1 and not (is_conv_weight and d >= 2)
        else None
        for d, size in enumerate(value.shape)
    ]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flatten_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


__all__ = ["Builder", "Dispatch", "walk"]
