"""Channel scorers behind one small protocol (``base.Scorer``), in a registry filled by
``@register_scorer``: ``l1`` and ``random`` (``magnitude``), ``synflow`` and ``snip``
(``synflow``), ``synflow_flops`` (``synflow_flops``). Importing this package registers
them all; ``get_scorer(name)`` and ``list_scorers()`` read the registry."""

from . import magnitude, synflow, synflow_flops  # noqa: F401  (fill the registry)
from .base import (
    SCORERS,
    Scorer,
    class_scores,
    get_scorer,
    list_scorers,
    producer_weight,
    register_scorer,
)
from .magnitude import L1Scorer, RandomScorer
from .synflow import SnipScorer, SynflowScorer
from .synflow_flops import SynflowPerFlop

__all__ = [
    "SCORERS",
    "L1Scorer",
    "RandomScorer",
    "Scorer",
    "SnipScorer",
    "SynflowPerFlop",
    "SynflowScorer",
    "class_scores",
    "get_scorer",
    "list_scorers",
    "producer_weight",
    "register_scorer",
]
