"""Channel selection: global percentile threshold with the per-group collapse guard.

Rule (the paper's Algorithm 1, made structured): every prunable channel class has one
score; all of them go into one global set, sorted ascending, and the lowest
``floor(ratio * N)`` are pruned (ranking instead of a float threshold makes ties
deterministic: lower class id first). Then each group that would keep fewer than
``ceil(min_ratio * size)`` channels (never fewer than one) gets its best-scored channels
back up to that floor. Frozen classes are always kept and count towards the floor.
``round_to`` then rounds each group's kept count up to a multiple (capped at its size).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .graph import ChannelGraph


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
) -> np.ndarray:
    """Return the keep mask over channel classes."""
    check_ratios(ratio, min_ratio)
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if scores.shape != (graph.num_classes,):
        raise ConfigError(f"expected {graph.num_classes} class scores, got {scores.shape}")
    keep = np.ones(graph.num_classes, dtype=bool)
    candidates = np.flatnonzero(~graph.class_frozen)
    n_prune = int(math.floor(ratio * len(candidates) + 1e-9))
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


__all__ = ["select_channels", "check_ratios"]
