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
from torch import fx

from ..analysis import ChannelGraph, Space
from ..errors import ConfigError, ScoreError
from ..ops import module_rule_for


class Scorer(Protocol):
    """``name``: registry key; ``needs_data``: wants a batch ``(inputs, targets)``;
    ``class_level``: returns one score per channel class (an array of length
    ``graph.num_classes``) instead of ``{producer space key: one score per index}``."""

    name: str
    needs_data: bool
    class_level: bool

    def __call__(self, graph: ChannelGraph, example_inputs: tuple, data: Any = None
                 ) -> dict[str, np.ndarray] | np.ndarray: ...


SCORERS: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str):
    def deco(factory):
        if name in SCORERS:
            raise KeyError(f"fxprune: scorer {name!r} is already registered")
        SCORERS[name] = factory
        return factory

    return deco


def get_scorer(name: str | Scorer, **options) -> Scorer:
    """A scorer instance by registry name (``options`` go to its constructor); a scorer
    object is returned as is. The built-in scorers register when ``fxprune.scoring``
    is imported, which importing this module always does first."""
    if not isinstance(name, str):
        return name
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(list_scorers())}")
    return SCORERS[name](**options)


def list_scorers() -> list[str]:
    """Registered scorer names, sorted (the CLI's choices)."""
    return sorted(SCORERS)


def producer_weight(gm: fx.GraphModule, space: Space) -> tuple[torch.Tensor, int] | None:
    """The tensor whose ``dim`` indexes ``space``: a ``get_attr`` tensor itself, or the
    module parameter its op rule names (``ModuleRule.producer_weight``)."""
    if space.kind == "parameter":
        obj: Any = gm
        for part in space.owner.split("."):
            obj = getattr(obj, part)
        return obj, space.dim
    module = gm.get_submodule(space.owner)
    rule = module_rule_for(module)
    got = rule.producer_weight(module, space.attr) if rule is not None else None
    if got is None:
        return None
    weight = getattr(module, got[0], None)
    return (weight, got[1]) if isinstance(weight, torch.Tensor) else None


def class_scores(graph: ChannelGraph, space_scores: dict[str, np.ndarray]) -> np.ndarray:
    total = np.zeros(graph.num_classes, dtype=np.float64)
    count = np.zeros(graph.num_classes, dtype=np.int64)
    strong = np.zeros(graph.num_classes, dtype=bool)  # scored by a non-weak producer
    for key in space_scores:
        if not graph.spaces[key].weak:
            strong[graph.atom_class[graph.spaces[key].atoms]] = True
    for key, s in space_scores.items():
        space = graph.spaces[key]
        s = np.asarray(s, dtype=np.float64)
        if s.shape != space.atoms.shape:
            raise ScoreError(f"scores for {key} have shape {s.shape}, expected {space.atoms.shape}")
        if not np.isfinite(s).all():
            raise ScoreError(f"non-finite channel score in {key}")
        cls = graph.atom_class[space.atoms]
        if space.weak:  # embeddings, get_attr tensors: only where nothing else scores
            cls, s = cls[~strong[cls]], s[~strong[cls]]
        np.add.at(total, cls, s)
        np.add.at(count, cls, 1)
    out = np.full(graph.num_classes, np.inf)
    has = count > 0
    out[has] = total[has] / count[has]
    return out


__all__ = [
    "SCORERS",
    "Scorer",
    "class_scores",
    "get_scorer",
    "list_scorers",
    "producer_weight",
    "register_scorer",
]
