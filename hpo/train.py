"""The training run every HPO trial and every final run performs.

SGD with momentum and weight decay; the learning rate is multiplied by ``decay_factor`` at
50% and 75% of the epochs (the paper's 80/120 of 160). Validation accuracy is measured
after every epoch and handed to ``on_epoch`` (which may raise ``optuna.TrialPruned``).

Deterministic for a given ``seed`` on CPU: shuffling and augmentation draw from a private
``torch.Generator``, and dropout-like ops draw from a forked global RNG seeded here. A
non-finite loss raises ``TrainingDiverged`` at once, naming the epoch and step.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.errors import FxPruneError
from hpo.data import Dataset
from hpo.space import HyperParams

EVAL_BATCH_SIZE = 512

EpochCallback = Callable[[int, float], None]  # (epoch counted from 1, val accuracy)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"diverged: loss={loss} at epoch {epoch}, step {step}")
        self.epoch = epoch
        self.step = step
        self.loss = loss


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch validation accuracy (fractions in [0, 1]) and the time it took."""

    val_accuracy: tuple[float, ...]
    seconds: float
    epochs: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", len(self.val_accuracy))

    @property
    def final_accuracy(self) -> float:
        return self.val_accuracy[-1] if self.val_accuracy else 0.0


def decay_milestones(epochs: int) -> tuple[int, ...]:
    """0-based epochs at whose start the learning rate is decayed: 50% and 75% of the run."""
    return tuple(sorted({m for m in (epochs // 2, (3 * epochs) // 4) if 0 < m < epochs}))


def learning_rate(hyperparams: HyperParams, epoch: int, epochs: int) -> float:
    """Step-decay schedule: ``lr * decay_factor ** (milestones passed)`` at 0-based ``epoch``."""
    passed = sum(1 for milestone in decay_milestones(epochs) if epoch >= milestone)
    return hyperparams.lr * hyperparams.decay_factor ** passed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` local processes: the cores shared out, so
    N workers do not oversubscribe the machine (each would otherwise take every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def train_model(
    model: nn.Module,
    data: Dataset,
    hyperparams: HyperParams,
    epochs: int,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs``; returns per-epoch validation accuracy."""
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=hyperparams.lr, momentum=hyperparams.momentum,
        weight_decay=hyperparams.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    train_size = len(data.train)
    batch_size = max(1, min(hyperparams.batch_size, train_size))
    accuracies: list[float] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(hyperparams, epoch, epochs)
            model.train()
            order = torch.randperm(train_size, generator=generator)
            # A last batch of one sample breaks BatchNorm in train mode: drop it.
            stop = train_size if train_size % batch_size != 1 else train_size - 1
            for step, first in enumerate(range(0, stop, batch_size)):
                images, labels = data.batch("train", order[first:first + batch_size], generator)
                loss = F.cross_entropy(model(images.to(device)), labels.to(device))
                if not torch.isfinite(loss):
                    raise TrainingDiverged(epoch + 1, step, float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            accuracy = evaluate(model, data, device=device)
            accuracies.append(accuracy)
            if on_epoch is not None:
                on_epoch(epoch + 1, accuracy)
    return TrainResult(tuple(accuracies), time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of ``model`` on the validation split, as a fraction."""
    device = torch.device(device) if device is not None else default_device()
    model.eval()
    correct = 0
    for first in range(0, len(data.val), EVAL_BATCH_SIZE):
        indices = torch.arange(first, min(first + EVAL_BATCH_SIZE, len(data.val)))
        images, labels = data.batch("val", indices)
        predictions = model(images.to(device)).argmax(dim=1).cpu()
        correct += int((predictions == labels).sum())
    return correct / max(1, len(data.val))


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with fresh weights: ``reset_parameters()`` on every submodule
    that has one, drawn from the global RNG forked and seeded with ``seed`` (so the caller's
    RNG stream is untouched). Raises ``FxPruneError`` naming any parameter left over, since a
    proxy that keeps pruned-at-init weights would tune for fine-tuning, not training."""
    fresh = copy.deepcopy(model)
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
    leftovers = [name for name, p in fresh.named_parameters() if id(p) not in covered]
    if leftovers:
        raise FxPruneError(f"cannot reinitialise parameter(s) {', '.join(leftovers[:5])}: their "
                         "module has no reset_parameters()")
    return fresh


__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "decay_milestones",
    "default_device",
    "evaluate",
    "learning_rate",
    "reinitialise",
    "threads_per_worker",
    "train_model",
]
