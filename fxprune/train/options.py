"""The knobs of complexity-aware training: the three trade-off parameters (checked by
``check_tradeoff``) and ``TrainPruneOptions`` for everything else (a frozen dataclass that
round-trips through a dict, saved into the plan's settings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from fxprune.errors import ConfigError


def check_tradeoff(gamma: float, beta: float, alpha: float) -> None:
    """The three user parameters: ``gamma >= 0``, ``beta`` and ``alpha`` in [0, 1]."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ConfigError(f"gamma (pruning strength) must be a finite number >= 0, got {gamma!r}")
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ConfigError(f"beta (layer vs unit pruning) must be in [0, 1], got {beta!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha (MACs vs params) must be in [0, 1], got {alpha!r}")


@dataclass(frozen=True)
class TrainPruneOptions:
    """Everything but the three trade-off parameters, epochs and learning rate."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    theta_lr: float = 0.01
    theta_optimizer: str = "sgd"  # "sgd" (cost-scaled learning rate) or "adam"
    theta_init: float = 1.0
    warmup_epochs: int | None = None  # None: a tenth of the epochs, at least 1
    settle_epochs: int = 0  # last epochs trained with the final, rounded structure
    threshold: float = 0.05
    patience: int = 3
    checks_per_epoch: int = 2
    recalibration_batches: int = 10  # BN statistics re-estimated with rounded gates before eval
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0 or self.theta_lr <= 0:
            raise ConfigError("weight_decay must be >= 0 and theta_lr > 0")
        if self.theta_optimizer not in ("sgd", "adam"):
            raise ConfigError(
                f"theta_optimizer must be 'sgd' or 'adam', got {self.theta_optimizer!r}"
            )
        if not 0.0 < self.theta_init <= 1.0:
            raise ConfigError(f"theta_init must be in (0, 1], got {self.theta_init!r}")
        if not 0.0 < self.threshold < 0.5:
            raise ConfigError(f"threshold must be in (0, 0.5), got {self.threshold!r}")
        if self.recalibration_batches < 0:
            raise ConfigError("recalibration_batches must be >= 0")
        if self.patience < 1 or self.checks_per_epoch < 1:
            raise ConfigError("patience and checks_per_epoch must be >= 1")
        for name in ("warmup_epochs", "settle_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")

    def warmup(self, epochs: int) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(max(1, epochs // 10), max(0, epochs - 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainPruneOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


__all__ = ["TrainPruneOptions", "check_tradeoff"]
