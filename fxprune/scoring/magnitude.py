"""Magnitude (L1) and random baselines."""

from __future__ import annotations

import numpy as np
import torch

from .base import producer_weight, register_scorer


def _reduce_over_fan(w: torch.Tensor, dim: int, fn) -> np.ndarray:
    w = w.detach().double().movedim(dim, 0).reshape(w.shape[dim], -1)
    return fn(w).cpu().numpy()


@register_scorer("l1")
class L1Scorer:
    """Mean absolute weight per output channel (magnitude pruning, Li et al. 2017)."""

    name = "l1"
    needs_data = False
    class_level = False

    def __call__(self, graph, example_inputs, data=None):
        out = {}
        for space in graph.producer_spaces():
            got = producer_weight(graph.gm, space)
            if got is not None:
                out[space.key] = _reduce_over_fan(got[0], got[1], lambda w: w.abs().mean(1))
        return out


@register_scorer("random")
class RandomScorer:
    """Uniform random scores (a baseline); ``seed`` makes it reproducible."""

    name = "random"
    needs_data = False
    class_level = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, graph, example_inputs, data=None):
        rng = np.random.default_rng(self.seed)
        return {s.key: rng.random(len(s.atoms)) for s in graph.producer_spaces()}


__all__ = ["L1Scorer", "RandomScorer"]
