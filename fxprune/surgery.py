"""Slim surgery: a NEW GraphModule whose parameters are physically smaller.

``slim(graph, keep)`` deep-copies the traced model, asks each module's op rule to cut
its parameters and attributes (``in_channels``, ``num_features``, ``groups``, ...),
slices ``get_attr`` tensors, and lets op rules rewrite constant arguments that encode
channel counts (split sizes, view shapes, slice bounds). The input is never modified.
A Parameter the dense model shares between modules (a tied LM head and its embedding) is
shared again in the slim model when every place kept the same channels.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
from torch import fx, nn

from .analysis import META_LABELS, ChannelGraph
from .errors import PlanError
from .ops import module_rule_for, rule_for
from .ops.common import slice_param


class RewriteContext:
    """What rewrite rules may ask: a node's (dense) labels and how many indices survive."""

    def __init__(self, graph: ChannelGraph, keep: np.ndarray):
        self.graph = graph
        self.keep = keep
        self._labels = {n.name: n.meta.get(META_LABELS) for n in graph.gm.graph.nodes}

    def labels(self, node: fx.Node):
        return self._labels.get(node.name)

    def kept_mask(self, atoms: np.ndarray) -> np.ndarray:
        return self.keep[self.graph.atom_class[atoms]]

    def kept_count(self, atoms: np.ndarray) -> int:
        return int(self.kept_mask(atoms).sum())


def check_keep(graph: ChannelGraph, keep: np.ndarray) -> None:
    if keep.shape != (graph.num_classes,) or keep.dtype != bool:
        raise PlanError(f"keep mask must be a bool array of length {graph.num_classes}")
    bad = np.flatnonzero(graph.class_frozen & ~keep)
    if len(bad):
        c = int(bad[0])
        raise PlanError(
            f"channel class {c} of group {int(graph.class_group[c])} is frozen "
            f"({graph.class_reason[c]}) but the plan removes it"
        )
    for space in graph.spaces.values():
        if not keep[graph.atom_class[space.atoms]].any():
            raise PlanError(f"plan removes every index of {space.key}; keep at least one channel")


def kept_indices(graph: ChannelGraph, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Space key -> kept positions, for the spaces that lose something."""
    out = {}
    for key, space in graph.spaces.items():
        mask = keep[graph.atom_class[space.atoms]]
        if not mask.all():
            out[key] = np.flatnonzero(mask)
    return out


def slim(graph: ChannelGraph, keep: np.ndarray) -> fx.GraphModule:
    check_keep(graph, keep)
    new = copy.deepcopy(graph.gm)
    tied = _tied_parameters(new)
    cuts = kept_indices(graph, keep)
    by_module: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, idx in cuts.items():
        space = graph.spaces[key]
        if space.kind == "module":
            by_module[space.owner][space.attr] = idx
        else:
            _slice_attr(new, space.owner, space.dim, idx)
    for owner, keep_by_attr in by_module.items():
        module = new.get_submodule(owner)
        rule = module_rule_for(module)
        rule.slice_(module, keep_by_attr)
    _retie(tied)
    ctx = RewriteContext(graph, keep)
    for node in new.graph.nodes:
        rule = rule_for(node)
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(node, ctx)
        node.meta.pop(META_LABELS, None)
    new.recompile()
    return new


def _tied_parameters(gm: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Places that hold one shared Parameter (a tied LM head and its embedding)."""
    places: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in gm.modules():
        for name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            places[id(param)].append((module, name))
    return [group for group in places.values() if len(group) > 1]


def _retie(tied: list[list[tuple[nn.Module, str]]]) -> None:
    """Slicing gives each place its own Parameter; where they came out identical (the same
    channels cut), they share one again, as in the dense model."""
    for (first_module, first_name), *others in tied:
        first = getattr(first_module, first_name)
        for module, name in others:
            param = getattr(module, name)
            if param is not first and param.shape == first.shape and not param.is_meta \
                    and torch.equal(param, first):
                setattr(module, name, first)


def _slice_attr(gm: nn.Module, target: str, dim: int, idx: np.ndarray) -> None:
    prefix, _, name = target.rpartition(".")
    slice_param(gm.get_submodule(prefix) if prefix else gm, name, dim, idx)


__all__ = ["RewriteContext", "check_keep", "kept_indices", "slim"]
