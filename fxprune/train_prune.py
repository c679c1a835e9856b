"""Complexity-aware training, kept importable under its first name: the code lives in
``fxprune.train`` (``trainer`` holds the method and its design notes, ``state`` the running
model, ``gate_training`` the gates' optimizer, ``options`` and ``results`` the data).

    >>> from fxprune.train_prune import train_prune, TrainPruneOptions
"""

from fxprune.train.gate_training import marginal_costs, recalibrate_batchnorm
from fxprune.train.options import TrainPruneOptions, check_tradeoff
from fxprune.train.results import EpochRecord, TrainPruneHistory, TrainPruneResult
from fxprune.train.state import PruningState
from fxprune.train.trainer import train_prune

__all__ = [
    "EpochRecord",
    "PruningState",
    "TrainPruneHistory",
    "TrainPruneOptions",
    "TrainPruneResult",
    "check_tradeoff",
    "marginal_costs",
    "recalibrate_batchnorm",
    "train_prune",
]
