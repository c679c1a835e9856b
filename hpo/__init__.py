"""Hyperparameter optimisation with a pruned proxy network (fxprune's HPO package).

Prune the base network at initialisation, reinitialise the slim network, run Optuna on it,
then train the base network with the best set (Lee & Yim). Names are re-exported lazily
so ``import hpo`` costs nothing until one is used (optuna, torch, matplotlib load late).

    >>> from hpo import HpoConfig, compare
    >>> report = compare(HpoConfig("fxprune:resnet20", data="digits", trials=12, epochs=6))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "hpo.space",
    "HyperParams": "hpo.space",
    "Dataset": "hpo.data",
    "load_dataset": "hpo.data",
    "train_model": "hpo.train",
    "reinitialise": "hpo.train",
    "TrainingDiverged": "hpo.train",
    "HpoConfig": "hpo.config",
    "ProxyHpo": "hpo.driver",
    "run": "hpo.driver",
    "compare": "hpo.driver",
    "collect_report": "hpo.driver",
    "HpoReport": "hpo.report",
    "hpo_app": "hpo.cli",
}

__all__ = [  # noqa: RUF022 - grouped by module, as in _EXPORTS
    "SearchSpace", "HyperParams", "Dataset", "load_dataset", "train_model", "reinitialise",
    "TrainingDiverged", "HpoConfig", "ProxyHpo", "run", "compare", "collect_report", "HpoReport", "hpo_app",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
