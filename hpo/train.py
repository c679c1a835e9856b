"""The training run every HPO trial and every final run performs, on the shared loop of
``fxprune.train.loop``.

SGD with momentum and weight decay; the learning rate is multiplied by ``decay_factor`` at
50% and 75% of the epochs (the paper's 80/120 of 160). Accuracy on ``eval_split`` (the
validation split for searches, the test split for final runs) is measured after every
epoch and handed to ``on_epoch`` (which may raise ``optuna.TrialPruned``).

Deterministic for a given ``seed`` on CPU: shuffling and augmentation draw from a private
``torch.Generator``, and dropout-like ops draw from a forked global RNG seeded here. A
non-finite loss raises ``TrainingDiverged`` at once, naming the epoch and step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fxprune.errors import FxPruneError
from fxprune.train.loop import (
    Batch,
    TrainingDiverged,
    cross_entropy_objective,
    default_device,
    threads_per_worker,
    train_epoch,
)
from fxprune.train.loop import evaluate as evaluate_batches
from hpo.data import Dataset
from hpo.space import HyperParams

EVAL_BATCH_SIZE = 512

EpochCallback = Callable[[int, float], None]  # (epoch counted from 1, accuracy)


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch accuracy on the evaluated split (fractions in [0, 1]) and the time it took."""

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


def train_batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """One shuffled, augmented epoch of the train split."""
    train_size = len(data.train)
    order = torch.randperm(train_size, generator=generator)
    # A last batch of one sample breaks BatchNorm in train mode: drop it.
    stop = train_size if train_size % batch_size != 1 else train_size - 1
    for first in range(0, stop, batch_size):
        yield data.batch("train", order[first:first + batch_size], generator)


def eval_batches(data: Dataset, split: str = "val") -> Iterator[Batch]:
    size = len(data.split(split))
    for first in range(0, size, EVAL_BATCH_SIZE):
        yield data.batch(split, torch.arange(first, min(first + EVAL_BATCH_SIZE, size)))


def train_model(
    model: nn.Module,
    data: Dataset,
    hyperparams: HyperParams,
    epochs: int,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    device: torch.device | str | None = None,
    eval_split: str = "val",
    lr_scales: Mapping[str, float] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs``; returns per-epoch accuracy on ``eval_split``.
    ``lr_scales`` maps parameter names to a multiplier of the gradient step (the proxy's
    ``proxy_lr="fan-in"``, ``hpo.network``): such a parameter trains at ``scale x`` the
    scheduled learning rate with ``weight_decay / scale``, so its weights still decay by
    ``lr * weight_decay`` per step, as everywhere else; the others train as usual."""
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    optimizer = torch.optim.SGD(
        _param_groups(model, lr_scales or {}, hyperparams.weight_decay), lr=hyperparams.lr,
        momentum=hyperparams.momentum, weight_decay=hyperparams.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    batch_size = max(1, min(hyperparams.batch_size, len(data.train)))
    objective = cross_entropy_objective(model)
    accuracies: list[float] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(hyperparams, epoch, epochs) * group["lr_scale"]
            model.train()
            train_epoch(train_batches(data, batch_size, generator), objective,
                        lambda: (optimizer,), epoch=epoch + 1, device=device)
            accuracy = evaluate(model, data, device=device, split=eval_split)
            accuracies.append(accuracy)
            if on_epoch is not None:
                on_epoch(epoch + 1, accuracy)
    return TrainResult(tuple(accuracies), time.perf_counter() - start)


def _param_groups(model: nn.Module, lr_scales: Mapping[str, float],
                  weight_decay: float) -> list[dict]:
    """One SGD parameter group per distinct step multiplier, in parameter order; its weight
    decay is divided by the multiplier (0 for a frozen group), so the decay per step
    (``lr * weight_decay``) is the same in every group."""
    named = dict(model.named_parameters())
    unknown = sorted(set(lr_scales) - set(named))
    if unknown:
        raise FxPruneError(f"learning-rate scales for parameters the model does not have: "
                           f"{', '.join(unknown[:5])}")
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in named.items():
        groups.setdefault(float(lr_scales.get(name, 1.0)), []).append(parameter)
    return [{"params": params, "lr_scale": scale,
             "weight_decay": weight_decay / scale if scale > 0 else 0.0}
            for scale, params in groups.items()]


def evaluate(model: nn.Module, data: Dataset, device: torch.device | str | None = None,
             split: str = "val") -> float:
    """Top-1 accuracy of ``model`` on ``split`` ("val" or "test"), as a fraction."""
    device = torch.device(device) if device is not None else default_device()
    if len(data.split(split)) == 0:
        return 0.0
    return evaluate_batches(model, eval_batches(data, split), device)


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with fresh weights: ``reset_parameters()`` on every submodule
    that has one, drawn from the global RNG forked and seeded with ``seed`` (so the caller's
    RNG stream is untouched). Raises ``FxPruneError`` naming any parameter left over, since a
    proxy that keeps pruned-at-init weights would tune for fine-tuning, not training.

    PyTorch's defaults, not the model's own initialisation: the HPO networks are rebuilt
    with their own init instead (``hpo.network``); this stays for models given as objects."""
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
    "eval_batches",
    "evaluate",
    "learning_rate",
    "reinitialise",
    "threads_per_worker",
    "train_batches",
    "train_model",
]
