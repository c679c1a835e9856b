"""Attention blocks and their heads, read off an analysed graph (for ``inspect`` and the
prune summary).

A *head split* is where a projection's channels become ``(heads, head_dim)``: a
channels-last view/reshape/unflatten ``(B, T, C) -> (B, T, H, Dh)`` (or the packed
``(B, T, 3, H, Dh)``, three splits), or an ``nn.MultiheadAttention`` leaf (its inner
``embed_dim`` channels). The splits are grouped into *blocks* by the module that owns
their channels' producer (``attn.q_proj`` -> block ``attn``), so a block lists the q, k
and v splits of one attention; with GQA the k/v splits have fewer heads (``kv_heads``).

Nothing here decides anything: the couplings are the op rules' (``layout.reshape_labels``,
``attention.couple_heads``); this module only reports what they made of each block:
how many heads and head dims, whether they are prunable or frozen (and why), and after
pruning how many survive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..analysis import META_LABELS, ChannelGraph
from ..trace import META_SHAPE

_RESHAPES = {"view", "reshape", "unflatten", torch.reshape, torch.unflatten}


@dataclass
class HeadBlock:
    """One attention's head splits: ``splits`` holds a ``(heads, head_dim)`` atom array
    per projection split (q, k, v in graph order)."""

    name: str
    splits: list[np.ndarray] = field(default_factory=list)

    @property
    def heads(self) -> int:
        return max(s.shape[0] for s in self.splits)

    @property
    def head_dim(self) -> int:
        return next(s.shape[1] for s in self.splits if s.shape[0] == self.heads)

    @property
    def kv_heads(self) -> int | None:
        """Heads of the k/v projections when fewer than the q heads (GQA), else None."""
        fewest = min(s.shape[0] for s in self.splits)
        return fewest if fewest < self.heads else None

    def atoms(self) -> np.ndarray:
        return np.concatenate([s.ravel() for s in self.splits])

    def kept(self, atom_keep: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """What survives ``atom_keep`` (atoms -> bool keep mask): a head survives if any
        of its channels does; ``head_dim`` is the q heads' (the split with the most heads,
        first in graph order); ``head_dims`` every split's, as v may keep other dims than
        q/k with ``heads="dims"``."""
        out: dict[str, Any] = {}
        dims = set()
        for split in self.splits:
            rows = atom_keep(split.ravel()).reshape(split.shape)  # (H, Dh)
            dim = int(rows.sum(axis=1).max(initial=0))
            dims.add(dim)
            if "heads" not in out and split.shape[0] == self.heads:
                out = {"heads": int(rows.any(axis=1).sum()), "head_dim": dim}
        out["head_dims"] = sorted(dims)
        return out


class _SpaceIndex:
    """Atom -> the space it was created in (spaces hold contiguous fresh atoms)."""

    def __init__(self, graph: ChannelGraph):
        spaces = [sp for sp in graph.spaces.values() if len(sp.atoms)]
        spaces.sort(key=lambda sp: int(sp.atoms[0]))
        self.spaces = spaces
        self.starts = np.asarray([int(sp.atoms[0]) for sp in spaces], dtype=np.int64)

    def block_of(self, atom: int, fallback: str) -> str:
        i = int(np.searchsorted(self.starts, atom, side="right")) - 1
        if i < 0 or atom >= self.starts[i] + len(self.spaces[i].atoms):
            return fallback
        space = self.spaces[i]
        module = space.owner if space.kind == "module" else space.owner.rpartition(".")[0]
        return module.rpartition(".")[0] or module


def _split_of(node: fx.Node) -> np.ndarray | None:
    """``(n, H, Dh)`` atoms if ``node`` splits a labelled channels-last dim into heads."""
    if node.target not in _RESHAPES or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    x = node.args[0]
    in_shape, shape = x.meta.get(META_SHAPE), node.meta.get(META_SHAPE)
    labels = x.meta.get(META_LABELS)
    if not (isinstance(in_shape, tuple) and isinstance(shape, tuple) and isinstance(labels, list)):
        return None
    if len(in_shape) < 3 or len(labels) != len(in_shape) or labels[-1] is None:
        return None
    lead = len(in_shape) - 1
    trailing = shape[lead:]
    if (tuple(shape[:lead]) != tuple(in_shape[:lead]) or len(trailing) < 2
            or math.prod(trailing) != in_shape[-1] or min(trailing[-2:]) < 2):
        return None
    return np.asarray(labels[-1]).reshape(-1, trailing[-2], trailing[-1])


def head_blocks(graph: ChannelGraph) -> list[HeadBlock]:
    """The attention blocks of ``graph`` in graph order (see the module docstring)."""
    index = _SpaceIndex(graph)
    blocks: dict[str, HeadBlock] = {}
    for node in graph.gm.graph.nodes:
        if node.op == "call_module":
            module = graph.gm.get_submodule(node.target)
            space = graph.spaces.get(f"{node.target}.embed_dim")
            if isinstance(module, nn.MultiheadAttention) and space is not None:
                atoms = space.atoms.reshape(module.num_heads, -1)
                blocks.setdefault(node.target, HeadBlock(node.target)).splits.append(atoms)
            continue
        split = _split_of(node)
        if split is None:
            continue
        name = index.block_of(int(split.flat[0]), node.name)
        block = blocks.setdefault(name, HeadBlock(name))
        block.splits.extend(split)
    return list(blocks.values())


def block_status(graph: ChannelGraph, block: HeadBlock) -> str:
    """``prunable``, ``partly frozen: why`` or ``frozen: why`` for the block's channels
    under ``graph``'s heads mode."""
    classes = np.unique(graph.atom_class[block.atoms()])
    frozen = graph.class_frozen[classes]
    if not frozen.any():
        return "prunable"
    reason = graph.class_reason[int(classes[frozen][0])]
    return f"{'frozen' if frozen.all() else 'partly frozen'}: {reason}"


def describe_blocks(dims_graph: ChannelGraph, whole_graph: ChannelGraph | None,
                    dims_blocks: list[HeadBlock] | None = None) -> list[dict[str, Any]]:
    """One row per block: heads, head dim, kv heads, and the status of head dims (from
    an analysis with ``heads="dims"``) and of whole heads (``heads="whole"``).
    ``dims_blocks``: ``head_blocks(dims_graph)`` read before its traced graph was
    labelled again for ``whole_graph``."""
    if dims_blocks is None:
        dims_blocks = head_blocks(dims_graph)
    whole = {b.name: b for b in head_blocks(whole_graph)} if whole_graph is not None else {}
    rows = []
    for block in dims_blocks:
        other = whole.get(block.name)
        rows.append({
            "block": block.name,
            "heads": block.heads,
            "head_dim": block.head_dim,
            "kv_heads": block.kv_heads,
            "dims": block_status(dims_graph, block),
            "whole_heads": block_status(whole_graph, other) if other is not None else None,
        })
    return rows


def heads_kept(graph: ChannelGraph, atom_keep: Callable[[np.ndarray], np.ndarray]) -> list[dict[str, Any]]:
    """Per block: heads and head dim before and after pruning (``atom_keep``: atoms ->
    bool keep mask over ``graph``'s atoms)."""
    rows = []
    for block in head_blocks(graph):
        kept = block.kept(atom_keep)
        rows.append({"block": block.name, "heads_before": block.heads, "heads_after": kept["heads"],
                     "head_dim_before": block.head_dim, "head_dim_after": kept["head_dim"],
                     "head_dims_after": kept["head_dims"]})
    return rows


__all__ = ["HeadBlock", "block_status", "describe_blocks", "head_blocks", "heads_kept"]
