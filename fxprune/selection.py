"""Channel selection: global percentile threshold with the per-group collapse guard.

Rule (the paper's Algorithm 1, made structured): every prunable channel class has one
score; all of them go into one global set, sorted ascending, and the lowest
``floor(ratio * N)`` are pruned (ranking instead of a float threshold makes ties
deterministic: lower class id first). Then each group that would keep fewer than
``ceil(min_ratio * size)`` channels (never fewer than one) gets its best-scored channels
back up to that floor. Frozen classes are always kept and count towards the floor. Every
layer dimension (space) gets the same floor, and no tensor dim of the graph keeps zero
channels (a packed q|k|v space could otherwise lose all of v's head dims).
``round_to`` then rounds each group's kept count up to a multiple (capped at its size).

``target="flops=0.3"`` (``select_for_target``) replaces the channel count by a budget:
prune in score order until the estimated MACs (``cost.CostModel``, exact for conv/linear
MACs: a product of kept in/out widths per layer) fall to 30% of the dense model
(``min_ratio`` still applies).
"""

from __future__ import annotations

import math

import numpy as np

from .analysis import META_LABELS, ChannelGraph
from .cost import CostModel
from .errors import ConfigError


def check_ratios(ratio: float, min_ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}")
    if not (isinstance(min_ratio, (int, float)) and 0.0 <= min_ratio <= 1.0):
        raise ConfigError(f"min_ratio must be in [0, 1], got {min_ratio!r}")


def _best(scores: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scored classes (ties: lower id first)."""
    order = np.lexsort((classes, -scores[classes]))
    return classes[order[:k]]


def select_channels(
    graph: ChannelGraph,
    scores: np.ndarray,
    ratio: float,
    min_ratio: float = 0.15,
    round_to: int | None = None,
    uniform: bool = False,
) -> np.ndarray:
    """Return the keep mask over channel classes. ``uniform``: instead of one global
    ranking, each group loses ``floor(ratio * size)`` of its lowest-scored classes."""
    check_ratios(ratio, min_ratio)
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if scores.shape != (graph.num_classes,):
        raise ConfigError(f"expected {graph.num_classes} class scores, got {scores.shape}")
    keep = np.ones(graph.num_classes, dtype=bool)
    candidates = np.flatnonzero(~graph.class_frozen)
    n_prune = math.floor(ratio * len(candidates) + 1e-9)
    if uniform:
        for group in graph.groups:
            free = group.classes[~graph.class_frozen[group.classes]]
            n = min(len(free), math.floor(ratio * group.size + 1e-9))
            keep[free[np.lexsort((free, scores[free]))[:n]]] = False
        n_prune = 0
    if n_prune:
        order = np.lexsort((candidates, scores[candidates]))
        keep[candidates[order[:n_prune]]] = False
    for group in graph.groups:
        cls = group.classes
        floor = max(1, math.ceil(min_ratio * group.size - 1e-9))
        kept = int(keep[cls].sum())
        if kept < floor:
            keep[_best(scores, cls, floor)] = True
            kept = int(keep[cls].sum())
        if round_to and kept % round_to:
            target = min(group.size, int(math.ceil(kept / round_to) * round_to))
            missing = cls[~keep[cls]]
            keep[_best(scores, missing, target - kept)] = True
    _floor_spaces(graph, scores, keep, min_ratio)
    _floor_node_dims(graph, scores, keep)
    return keep


def _floor_spaces(graph: ChannelGraph, scores: np.ndarray, keep: np.ndarray, min_ratio: float):
    """Every layer dimension (conv in/out channels, the piece of a split, ...) keeps at
    least ``ceil(min_ratio * size)`` of its indices, never zero."""
    for space in graph.spaces.values():
        cls = graph.atom_class[space.atoms]
        floor = max(1, math.ceil(min_ratio * len(cls) - 1e-9))
        if int(keep[cls].sum()) >= floor:
            continue
        uniq = np.unique(cls)
        # classes may repeat inside one space (flatten, multiplier): add best ones until enough
        for c in _best(scores, uniq[~keep[uniq]], len(uniq)):
            keep[c] = True
            if int(keep[cls].sum()) >= floor:
                break


def _floor_node_dims(graph: ChannelGraph, scores: np.ndarray, keep: np.ndarray) -> None:
    """No tensor dim of the graph loses all of its channels: a packed q|k|v projection is
    one space, so its floor can be met by q/k head dims alone, and the v heads' view
    ``(B, T, -1, 0)`` would not run. Such a dim gets its best-scored class back."""
    seen: set[bytes] = set()
    for node in graph.gm.graph.nodes:
        for atoms in _label_arrays(node.meta.get(META_LABELS)):
            cls = np.unique(graph.atom_class[atoms])
            key = cls.tobytes()
            if key in seen:
                continue
            seen.add(key)
            if not keep[cls].any():
                keep[_best(scores, cls, 1)] = True


def _label_arrays(labels) -> list[np.ndarray]:
    """The atom arrays of a node's labels (a list per dim, nested for tuple outputs)."""
    if isinstance(labels, np.ndarray):
        return [labels] if labels.size else []
    if isinstance(labels, (list, tuple)):
        return [a for item in labels for a in _label_arrays(item)]
    return []


def parse_target(target: str) -> float:
    key, _, value = target.partition("=")
    try:
        frac = float(value)
    except ValueError:
        frac = -1.0
    if key.strip().lower() not in ("flops", "macs") or not 0.0 < frac <= 1.0:
        raise ConfigError(f"target must look like 'flops=0.3' (a fraction in (0, 1]), got {target!r}")
    return frac


def select_for_target(graph: ChannelGraph, scores: np.ndarray, example_inputs, target: str,
                      min_ratio: float, round_to: int | None) -> np.ndarray:
    """Smallest channel cut (in score order) whose estimated MACs reach the target."""
    frac = parse_target(target)
    cost = CostModel(graph, example_inputs)
    goal = frac * cost.total
    lo, hi = 0.0, 0.999
    best = select_channels(graph, scores, hi, min_ratio, round_to)
    if cost.macs(best) > goal:
        return best  # the floor keeps more than the target; closest we can get
    for _ in range(20):  # bisection on the channel ratio
        mid = (lo + hi) / 2
        keep = select_channels(graph, scores, mid, min_ratio, round_to)
        if cost.macs(keep) <= goal:
            hi, best = mid, keep
        else:
            lo = mid
    return best


__all__ = ["check_ratios", "parse_target", "select_channels", "select_for_target"]
