"""The channel-dependency graph.

Design
------
Every prunable dimension of a parameter-owning module (``conv.out_channels``,
``bn.num_features``, ``fc.in_features``, ...) and of every floating-point tensor reached
through ``get_attr`` is a *space*: a 1-D array of fresh integer *atoms*, one per index.
Walking the traced graph once, each node's output gets *labels*: for every tensor
dimension either ``None`` (not a channel dimension: batch, spatial, tokens, model input)
or a 1-D array of atoms naming which channel each index carries. Op handlers (see
``handlers.py``; one registry per kind of dispatch) propagate labels and record
*couplings*: "these atoms must be cut together" (a residual add unions its operands'
channel atoms elementwise; a conv unions its input's channel atoms with its own
``in_channels`` space; ``torch.cat`` concatenates label arrays, so offsets are free).

At the end, connected components over the coupling edges give *classes*: the units of
pruning (removing a class removes every index of every space and tensor that carries one
of its atoms). Classes that share a producer space (the ``out_channels`` of one conv, a
whole residual stream, ...) form a ``ChannelGroup``: the unit of the per-layer
``min_ratio`` guard and of reporting.

Safety rules, in the spirit of "never guess":
* an op nobody registered freezes every channel it touches (they are always kept) and is
  listed in ``ChannelGraph.unhandled`` with its node name;
* a channel dimension that meets a non-channel dimension of the same size (``None``
  label) in an elementwise op is frozen;
* model outputs are frozen;
* ops that mix values *across* channels in a way masking cannot reproduce (LayerNorm or
  GroupNorm statistics, softmax or mean over channels) mark the class *inexact*: pruning
  it is structurally valid, but the masked-dense oracle cannot match numerically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .trace import META_SHAPE

META_LABELS = "fxprune_labels"
# size values read from tensors (x.size(), x.shape, and arithmetic on them): the set of
# (tensor node name, dim) they depend on, so a reshape of ANOTHER tensor by them is caught
META_SIZE_OF = "fxprune_size_of"

Labels = list  # list[np.ndarray | None], one entry per tensor dimension


@dataclass
class Space:
    """A prunable dimension of a module attribute or of a ``get_attr`` tensor."""

    key: str  # unique: "layer1.0.conv1.out_channels" or "layer_scale#0"
    owner: str  # module qualname, or tensor qualname for kind == "parameter"
    attr: str  # module attribute name ("out_channels"), or "dim{d}" for a parameter
    kind: str  # "module" | "parameter"
    dim: int  # tensor dim for parameters; informational for modules
    atoms: np.ndarray
    producer: bool  # creates channels (conv/linear outputs, get_attr tensors)


@dataclass
class ChannelGroup:
    """Channels that must be cut together; ``size`` independent units (classes)."""

    id: int
    classes: np.ndarray  # class ids, sorted by first appearance
    members: list[str]  # space keys touching this group
    frozen_classes: int  # how many classes are pinned (always kept)
    frozen_reason: str | None  # first reason a class of this group was pinned
    inexact_reason: str | None  # set if masking cannot reproduce pruning numerically

    @property
    def size(self) -> int:
        return int(len(self.classes))

    @property
    def prunable(self) -> bool:
        return self.frozen_classes < self.size


@dataclass
class UnhandledOp:
    node: str
    target: str
    reason: str


@dataclass
class ChannelGraph:
    """Result of the analysis. ``gm`` is the traced GraphModule whose nodes carry labels."""

    gm: fx.GraphModule
    atom_class: np.ndarray  # atom id -> class id
    class_group: np.ndarray  # class id -> group id
    class_frozen: np.ndarray  # bool per class
    class_reason: list[str | None]  # why a class is frozen
    class_inexact: np.ndarray  # bool per class
    spaces: dict[str, Space]
    groups: list[ChannelGroup]
    unhandled: list[UnhandledOp]

    @property
    def num_classes(self) -> int:
        return int(len(self.class_group))

    def classes_of(self, atoms: np.ndarray) -> np.ndarray:
        return self.atom_class[atoms]

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def producer_spaces(self) -> list[Space]:
        return [s for s in self.spaces.values() if s.producer]

    def full_keep(self) -> np.ndarray:
        return np.ones(self.num_classes, dtype=bool)

    def summary(self) -> dict[str, Any]:
        return {
            "groups": len(self.groups),
            "prunable_groups": len(self.prunable_groups()),
            "channels": int(self.num_classes),
            "prunable_channels": int((~self.class_frozen).sum()),
            "unhandled_ops": [u.__dict__ for u in self.unhandled],
        }


class Builder:
    """Context handed to op handlers while walking the graph."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.by_name = {n.name: n for n in gm.graph.nodes}
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

    def module_space(self, owner: str, attr: str, size: int, producer: bool) -> np.ndarray:
        key = f"{owner}.{attr}" if owner else attr
        space = self.spaces.get(key)
        if space is None:
            space = Space(key, owner, attr, "module", -1, self.fresh(size), producer)
            self.spaces[key] = space
        return space.atoms

    def param_space(self, qualname: str, dim: int, size: int) -> np.ndarray:
        key = f"{qualname}#{dim}"
        space = self.spaces.get(key)
        if space is None:
            space = Space(key, qualname, f"dim{dim}", "parameter", dim, self.fresh(size), True)
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
                self.freeze_labels(lab, f"unhandled op at node '{node.name}' ({_target_name(node)})")
        out_shape = node.meta.get(META_SHAPE)
        if touched or out_shape is not None:
            self.unhandled.append(UnhandledOp(node.name, _target_name(node), reason))
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
                    frozen_classes=int(len(frozen)),
                    frozen_reason=class_reason[int(frozen[0])] if len(frozen) else None,
                    inexact_reason=inexact_reason.get(int(inexact[0])) if len(inexact) else None,
                )
            )
        return groups


# -- label helpers ----------------------------------------------------------------------
def plain_labels(shape: Any) -> Any:
    """Labels for a value with no channel dims: ``[None] * ndim`` (nested for tuples)."""
    if shape is None:
        return None
    if isinstance(shape, tuple) and all(isinstance(x, int) for x in shape):
        return [None] * len(shape)
    if isinstance(shape, (tuple, list)):
        return type(shape)(plain_labels(s) for s in shape)
    return None


def iter_arrays(labels: Any):
    """All label arrays inside a (possibly nested) labels value."""
    if labels is None:
        return
    if isinstance(labels, np.ndarray):
        yield labels
        return
    if isinstance(labels, (list, tuple)):
        for x in labels:
            yield from iter_arrays(x)


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"{t} ({type(node.graph.owning_module.get_submodule(t)).__name__})"
    if node.op == "call_method":
        return f"Tensor.{t}"
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)


def build_channel_graph(gm: fx.GraphModule) -> ChannelGraph:
    """Analyse a shape-annotated GraphModule (from ``trace_model``)."""
    from .handlers import dispatch

    b = Builder(gm)
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
    return [
        b.param_space(node.target, d, size) if size > 1 else None
        for d, size in enumerate(value.shape)
    ]


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flatten_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Space",
    "UnhandledOp",
    "Builder",
    "build_channel_graph",
    "META_LABELS",
    "META_SIZE_OF",
    "plain_labels",
    "iter_arrays",
]
