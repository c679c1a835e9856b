"""The channel-dependency graph.

Design
------
Every prunable dimension of a parameter-owning module (``conv.out_channels``,
``bn.num_features``, ``fc.in_features``, ...) and of every floating-point tensor reached
through ``get_attr`` is a *space*: a 1-D array of fresh integer *atoms*, one per index.
Walking the traced graph once, each node's output gets *labels*: for every tensor
dimension either ``None`` (not a channel dimension: batch, spatial, tokens, model input)
or a 1-D array of atoms naming which channel each index carries. Op rules (see
``fxprune.ops``; one registry per kind of dispatch) propagate labels and record
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
from torch import fx

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
    # a weak producer (embedding tables, get_attr tensors: position embeddings, layer
    # scales) scores only classes that no conv/linear-like producer scores: an embedding
    # row of ~N(0, 1) would otherwise dominate the mean and a residual stream never goes
    weak: bool = False


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
        return len(self.classes)

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
        return len(self.class_group)

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


def target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"{t} ({type(node.graph.owning_module.get_submodule(t)).__name__})"
    if node.op == "call_method":
        return f"Tensor.{t}"
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)




__all__ = [
    "META_LABELS",
    "META_SIZE_OF",
    "ChannelGraph",
    "ChannelGroup",
    "Labels",
    "Space",
    "UnhandledOp",
    "iter_arrays",
    "plain_labels",
    "target_name",
]
