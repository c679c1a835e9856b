"""Channel scorers behind one small protocol.

A scorer returns, for each *producer* space (a conv's ``out_channels``, a linear's
``out_features``, a ``get_attr`` tensor dim), one score per index. ``class_scores``
combines them into one score per channel class (the unit that is cut): the MEAN over
every producer index carrying that class. Mean rather than sum keeps groups of
different membership comparable in the global ranking: a residual stream fed by nine
convs would otherwise always outrank a plain layer. Classes no producer scored
(unusual: e.g. only reached through frozen inputs) score +inf and are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .errors import ConfigError, ScoreError
from .graph import ChannelGraph, Space


class Scorer(Protocol):
    name: str
    needs_data: bool

    def __call__(self, graph: ChannelGraph, example_inputs: tuple, data: Any = None
                 ) -> dict[str, np.ndarray]: ...


SCORERS: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str):
    def deco(factory):
        if name in SCORERS:
            raise KeyError(f"fxprune: scorer {name!r} is already registered")
        SCORERS[name] = factory
        return factory

    return deco


def get_scorer(name: str | Scorer, **options) -> Scorer:
    if not isinstance(name, str):
        return name
    _load_builtin_scorers()
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(sorted(SCORERS))}")
    return SCORERS[name](**options)


def _load_builtin_scorers() -> None:
    from . import flops_target, synflow  # noqa: F401  (registration side effect)


def producer_weight(gm: fx.GraphModule, space: Space) -> tuple[torch.Tensor, int] | None:
    """The tensor whose ``dim`` indexes ``space`` (weight of conv/linear, or the attr)."""
    if space.kind == "parameter":
        obj: Any = gm
        for part in space.owner.split("."):
            obj = getattr(obj, part)
        return obj, space.dim
    module = gm.get_submodule(space.owner)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if space.attr == "out_channels":
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        return weight, 1 if transposed else 0
    if space.attr in ("out_features",):
        return weight, 0
    if space.attr == "embedding_dim":
        return weight, 1
    return None


def class_scores(graph: ChannelGraph, space_scores: dict[str, np.ndarray]) -> np.ndarray:
    total = np.zeros(graph.num_classes, dtype=np.float64)
    count = np.zeros(graph.num_classes, dtype=np.int64)
    for key, s in space_scores.items():
        space = graph.spaces[key]
        s = np.asarray(s, dtype=np.float64)
        if s.shape != space.atoms.shape:
            raise ScoreError(f"scores for {key} have shape {s.shape}, expected {space.atoms.shape}")
        if not np.isfinite(s).all():
            raise ScoreError(f"non-finite channel score in {key}")
        cls = graph.atom_class[space.atoms]
        np.add.at(total, cls, s)
        np.add.at(count, cls, 1)
    out = np.full(graph.num_classes, np.inf)
    has = count > 0
    out[has] = total[has] / count[has]
    return out


def _reduce_over_fan(w: torch.Tensor, dim: int, fn) -> np.ndarray:
    w = w.detach().double().movedim(dim, 0).reshape(w.shape[dim], -1)
    return fn(w).cpu().numpy()


@register_scorer("l1")
class L1Scorer:
    """Mean absolute weight per output channel (magnitude pruning, Li et al. 2017)."""

    name = "l1"
    needs_data = False

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

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, graph, example_inputs, data=None):
        rng = np.random.default_rng(self.seed)
        return {s.key: rng.random(len(s.atoms)) for s in graph.producer_spaces()}


__all__ = ["Scorer", "SCORERS", "register_scorer", "get_scorer", "class_scores", "producer_weight"]
