"""``heads="both"``: whole heads and head dims pruned in one call, as two composed passes.

Why two passes. The label model gives every channel exactly one class. Cutting whole
heads makes one class per head (all its dims); cutting head dims uniformly makes one
class per head dim (shared by every head). Keeping "head h AND dim d" is a product of
the two, which no single partition expresses. So ``prune(..., heads="both")`` runs
``heads="whole"`` on the dense model, then ``heads="dims"`` on that slim model, and
composes the two keep masks into ONE result relative to the original model.

The composed result. ``ComposedGraph`` is the common refinement of the dense model's
two analyses (``whole`` and ``dims``): a class is a pair (whole-heads class, head-dims
class), so for a head projection one class per (head, dim) and elsewhere the usual
classes. A keep mask over those classes is the composed plan: ``make_plan`` writes kept
indices in the original index space, ``keep_from_plan`` reads them back, and
``ComposedGraph.slim`` replays them in two stages (whole heads, then head dims on the
stage-one slim model, indices mapped through), which is what ``apply_plan`` does.

The oracle. A tensor after a head split carries labels of one axis only (heads for
``whole``, head dims for ``dims``), so one partition cannot mask it. ``ComposedMasks``
masks every node with both analyses' labels, each with its own keep (a class kept if any
of its channels is), and their product is the composed keep: head h's dim d survives iff
head h and dim d do. The product is checked against the composed keep on every space.

Budget (``fxprune.api``). Each pass removes ``1 - sqrt(1 - ratio)`` of the classes it
ranks and keeps at least ``sqrt(min_ratio)`` of every group, so kept fractions multiply
to ``1 - ratio`` and ``min_ratio``: the model overall, and attention as about
``sqrt(1 - ratio)`` of the heads times ``sqrt(1 - ratio)`` of their dims.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx

from .analysis import META_LABELS, ChannelGraph, ChannelGroup
from .errors import ConfigError, PlanError
from .ops import build_channel_graph
from .surgery import slim as slim_graph
from .trace import as_input_tuple, propagate_shapes
from .verify import ClassMasks, label_masks


def analyze_slim(gm: fx.GraphModule, inputs: tuple, heads: str) -> ChannelGraph:
    """The channel graph of a slim GraphModule, without tracing it again (a copy)."""
    gm = copy.deepcopy(gm)
    propagate_shapes(gm, as_input_tuple(inputs))
    return build_channel_graph(gm, {"heads": heads})


def split_budget(ratio: float, min_ratio: float) -> tuple[float, float]:
    """Per-pass ratio and min_ratio whose kept fractions multiply to the user's."""
    return 1.0 - (1.0 - ratio) ** 0.5, min_ratio ** 0.5


@dataclass
class ComposedGraph(ChannelGraph):
    """The dense model's ``whole`` and ``dims`` analyses refined into one partition
    (see the module docstring). ``gm`` and ``spaces`` are the ``whole`` analysis's."""

    whole: ChannelGraph = None  # type: ignore[assignment]
    dims: ChannelGraph = None  # type: ignore[assignment]
    inputs: tuple = ()

    @classmethod
    def build(cls, whole: ChannelGraph, dims: ChannelGraph, inputs: tuple) -> ComposedGraph:
        if whole.spaces.keys() != dims.spaces.keys() or any(
                not np.array_equal(s.atoms, dims.spaces[k].atoms) for k, s in whole.spaces.items()):
            raise PlanError("heads='both': the whole-heads and head-dims analyses of this model "
                            "differ in their channel spaces; use heads='whole' or 'dims'")
        n_dims = dims.num_classes
        pair = whole.atom_class.astype(np.int64) * n_dims + dims.atom_class
        pairs, atom_class = np.unique(pair, return_inverse=True)
        w_of, d_of = pairs // n_dims, pairs % n_dims  # refined class -> its two classes
        # kept for good only if neither pass may cut it (RoPE tables: frozen against whole
        # heads, cut with head dims)
        frozen = whole.class_frozen[w_of] & dims.class_frozen[d_of]
        inexact = whole.class_inexact[w_of] | dims.class_inexact[d_of]
        reason = [whole.class_reason[w] if f else None for w, f in zip(w_of, frozen)]
        class_group = whole.class_group[w_of]
        groups = []
        for g in whole.groups:
            classes = np.flatnonzero(class_group == g.id)
            groups.append(ChannelGroup(g.id, classes, list(g.members), int(frozen[classes].sum()),
                                       g.frozen_reason, g.inexact_reason))
        return cls(gm=whole.gm, atom_class=atom_class.astype(np.int64), class_group=class_group,
                   class_frozen=frozen, class_reason=reason, class_inexact=inexact,
                   spaces=whole.spaces, groups=groups, unhandled=list(whole.unhandled),
                   whole=whole, dims=dims, inputs=as_input_tuple(inputs))

    # -- composing and replaying -------------------------------------------------------
    def compose(self, whole_keep: np.ndarray, stage_two: ChannelGraph, dims_keep: np.ndarray) -> np.ndarray:
        """The refined keep of ``whole_keep`` (over ``self.whole``) followed by
        ``dims_keep`` (over ``stage_two``, the analysis of the stage-one slim model)."""
        atom_keep = np.zeros(len(self.atom_class), dtype=bool)
        for key, space in self.spaces.items():
            first = np.flatnonzero(whole_keep[self.whole.atom_class[space.atoms]])
            inner = stage_two.spaces.get(key)
            if inner is None or len(inner.atoms) != len(first):
                raise PlanError(f"heads='both': stage two has no matching dimension for '{key}'")
            second = dims_keep[stage_two.atom_class[inner.atoms]]
            atom_keep[space.atoms[first[second]]] = True
        return self._class_keep(atom_keep)

    def _class_keep(self, atom_keep: np.ndarray) -> np.ndarray:
        any_kept = np.zeros(self.num_classes, dtype=bool)
        all_kept = np.ones(self.num_classes, dtype=bool)
        np.logical_or.at(any_kept, self.atom_class, atom_keep)
        np.logical_and.at(all_kept, self.atom_class, atom_keep)
        if not np.array_equal(any_kept, all_kept):
            raise PlanError("heads='both': the two passes do not compose into whole channel classes")
        return any_kept

    def stage_keeps(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep masks over ``whole``'s and ``dims``' classes: a class kept if any of its
        channels is; stage one also keeps what it may not cut (stage two cuts it)."""
        atom_keep = keep[self.atom_class]
        out = []
        for graph in (self.whole, self.dims):
            part = np.zeros(graph.num_classes, dtype=bool)
            np.logical_or.at(part, graph.atom_class, atom_keep)
            out.append(part)
        return out[0] | self.whole.class_frozen, out[1]

    def slim(self, keep: np.ndarray) -> fx.GraphModule:
        """Replay a refined keep in two stages: whole heads, then head dims."""
        atom_keep = keep[self.atom_class]
        whole_keep, _ = self.stage_keeps(keep)
        stage_one = slim_graph(self.whole, whole_keep)
        two = analyze_slim(stage_one, self.inputs, "dims")
        dims_keep = np.ones(two.num_classes, dtype=bool)
        wanted = {}
        for key, space in self.spaces.items():
            first = np.flatnonzero(whole_keep[self.whole.atom_class[space.atoms]])
            inner = two.spaces.get(key)
            if inner is None or len(inner.atoms) != len(first):
                raise PlanError(f"heads='both': stage two has no matching dimension for '{key}'")
            wanted[key] = atom_keep[space.atoms[first]]
            dims_keep[two.atom_class[inner.atoms[~wanted[key]]]] = False
        for key, mask in wanted.items():
            if not np.array_equal(dims_keep[two.atom_class[two.spaces[key].atoms]], mask):
                raise PlanError(f"heads='both': head dims cannot be cut as planned at '{key}'")
        return slim_graph(two, dims_keep)

    def oracle_masks(self, keep: np.ndarray) -> ComposedMasks:
        return ComposedMasks(self, keep)


class ComposedMasks(ClassMasks):
    """Masks with both analyses' labels; their product is the composed keep."""

    def __init__(self, graph: ComposedGraph, keep: np.ndarray):
        super().__init__(graph, keep)
        self.whole_keep, self.dims_keep = graph.stage_keeps(keep)
        self.dims_nodes = {n.name: n for n in graph.dims.gm.graph.nodes}
        for key, space in graph.spaces.items():  # the product is the composed keep
            product = (self.whole_keep[graph.whole.atom_class[space.atoms]]
                       & self.dims_keep[graph.dims.atom_class[space.atoms]])
            if not np.array_equal(product, self.atoms(space.atoms)):
                raise PlanError(f"heads='both': the oracle cannot mask '{key}' as planned")

    def dim_masks(self, node: fx.Node) -> Any:
        whole = label_masks(node.meta.get(META_LABELS), lambda a: self.whole_keep[self.graph.whole.atom_class[a]])
        twin = self.dims_nodes.get(node.name)
        if twin is None or twin.target != node.target:
            raise PlanError(f"heads='both': node '{node.name}' differs between the two analyses")
        dims = label_masks(twin.meta.get(META_LABELS), lambda a: self.dims_keep[self.graph.dims.atom_class[a]])
        return _both(whole, dims)


def _both(a: Any, b: Any) -> Any:
    """Elementwise AND of two mask structures (None: everything kept)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a & b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
        merged = [_both(x, y) for x, y in zip(longer, shorter)] + list(longer[len(shorter):])
        return type(a)(merged)
    return a if isinstance(a, np.ndarray) else b


def check_both_target(target: Any) -> None:
    if target is not None and not isinstance(target, str):
        raise ConfigError("heads='both' takes a ratio or a 'flops=...' target, not a target object")


__all__ = ["ComposedGraph", "ComposedMasks", "analyze_slim", "check_both_target", "split_budget"]
