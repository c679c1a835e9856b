"""The one training and evaluation loop: HPO trials, HPO final runs and ``train_prune``
all step through ``train_epoch`` and measure with ``evaluate``.

What differs between them is passed in, not copied: ``objective(x, y)`` returns the loss to
minimise and the task loss to report (``train_prune`` adds its expected-cost term), the
optimizers to step come from a callable (``train_prune`` swaps its optimizers when it
removes structure), and ``after_step`` runs after every update (gate clamping, pruning
checks). A non-finite loss raises ``TrainingDiverged`` before any update is applied.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 2)
    >>> batches = [(torch.eye(2), torch.tensor([0, 1]))]
    >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> stats = train_epoch(batches, cross_entropy_objective(model), lambda: [sgd], epoch=1)
    >>> stats.batches, stats.steps
    (1, 1)
    >>> 0.0 <= evaluate(model, batches) <= 1.0
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.errors import DataError, FxPruneError

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs (B, ...), integer targets (B,)
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainingDiverged(FxPruneError):
    """The training loss became NaN or infinite (``epoch`` counted from 1)."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"diverged: loss={loss} at epoch {epoch}, step {step}")
        self.epoch = epoch
        self.step = step
        self.loss = loss


@dataclass(frozen=True)
class EpochStats:
    """Mean objective and task loss over an epoch's batches; ``steps`` is the running count
    of optimizer steps after the epoch (``first_step`` + batches)."""

    loss: float
    task_loss: float
    batches: int
    steps: int


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` local processes: the cores shared out, so
    N workers do not oversubscribe the machine (each would otherwise take every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def cross_entropy_objective(model: nn.Module) -> Objective:
    """The plain objective: cross-entropy of ``model(x)``, reported as the task loss too."""

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(model(x), y)
        return loss, loss

    return objective


def train_epoch(
    batches: Iterable[Batch],
    objective: Objective,
    optimizers: Callable[[], Sequence[torch.optim.Optimizer]],
    *,
    epoch: int,
    first_step: int = 0,
    device: torch.device | str | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> EpochStats:
    """One pass over ``batches``: loss, finite check, zero_grad, backward, step.

    ``before_step(step)`` runs before the forward pass (learning-rate schedules),
    ``after_step(step)`` after the update with the running step count. The model's
    train/eval mode is the caller's business."""
    device = torch.device(device) if device is not None else default_device()
    step = first_step
    loss_sum = task_sum = 0.0
    count = 0
    for x, y in batches:
        if before_step is not None:
            before_step(step)
        loss, task = objective(x.to(device), y.to(device))
        if not torch.isfinite(loss):
            raise TrainingDiverged(epoch, step, float(loss.detach()))
        active = list(optimizers())
        for optimizer in active:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in active:
            optimizer.step()
        loss_sum += float(loss.detach())
        task_sum += float(task.detach())
        count += 1
        step += 1
        if after_step is not None:
            after_step(step)
    if count == 0:
        raise DataError("the training data yielded no batches")
    return EpochStats(loss_sum / count, task_sum / count, count, step)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch],
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of ``model`` over ``batches``, as a fraction; the model is left in
    the mode it was in."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in batches:
            predictions = model(x.to(device)).argmax(dim=1)
            correct += int((predictions == y.to(device)).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("the evaluation data yielded no examples")
    return correct / total


__all__ = [
    "Batch",
    "EpochStats",
    "Objective",
    "TrainingDiverged",
    "cross_entropy_objective",
    "default_device",
    "evaluate",
    "threads_per_worker",
    "train_epoch",
]
