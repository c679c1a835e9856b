"""Training step time in PyTorch: what a pruned proxy saves during HPO.

``measure_step_time`` times forward + backward (``loss = sum of the outputs' means``, no
optimizer) on a private copy of the model in train mode, with the timing rule of
``fxprune.deploy.profiling`` (until the median's 95% interval is within +-3%, bounded).
``compare_step_times`` times a dense and a slim model interleaved and returns the
speed-up with its interval: ``hpo compare`` reports it next to the MACs reduction.
On CUDA every step is synchronised, so the time is what the step really costs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .profiling import LatencyStat, Progress, Timing, compare, time_interleaved, verdict

STEP_TIMING = Timing(warmup=2, min_runs=10, min_seconds=1.0, max_seconds=30.0)


@dataclass(frozen=True)
class StepTime:
    """One model's forward+backward time at one batch size on one device."""

    device: str
    batch: int
    stat: LatencyStat

    @property
    def median_ms(self) -> float:
        return self.stat.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch": self.batch, "stat": self.stat.to_dict()}


@dataclass(frozen=True)
class StepTimeComparison:
    dense: StepTime
    slim: StepTime

    @property
    def speedup(self) -> float:
        return compare(self.dense.stat, self.slim.stat)[0]

    @property
    def interval(self) -> tuple[float, float] | None:
        _, low, high = compare(self.dense.stat, self.slim.stat)
        return None if low is None else (low, high)

    @property
    def verdict(self) -> str | None:
        return verdict(self.dense.stat, self.slim.stat)

    def to_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.to_dict(), "slim": self.slim.to_dict(), "speedup": self.speedup,
                "speedup_ci": list(self.interval) if self.interval else None, "verdict": self.verdict}  # fmt: skip


def _step(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        outputs = model(*inputs)
        loss = sum(t.float().mean() for t in _tensors(outputs))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _prepared(model: nn.Module, example_inputs, device: torch.device):
    private = copy.deepcopy(model).to(device).train()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    return private, tuple(t.to(device) for t in inputs)


def compare_step_times(
    dense: nn.Module,
    slim: nn.Module,
    example_inputs,
    *,
    device: str | torch.device = "cpu",
    timing: Timing = STEP_TIMING,
    progress: Progress | None = None,
) -> StepTimeComparison:
    """Forward+backward time of ``dense`` and ``slim`` on ``example_inputs``, interleaved."""
    device = torch.device(device)
    runners, batch = {}, 0
    for label, model in (("dense", dense), ("slim", slim)):
        private, inputs = _prepared(model, example_inputs, device)
        batch = int(inputs[0].shape[0]) if inputs[0].dim() else 1
        runners[label] = _step(private, inputs, device)
    times = time_interleaved(runners, timing, progress=progress, what="training step")
    stats = {k: StepTime(str(device), batch, LatencyStat.from_times(batch, v)) for k, v in times.items()}
    return StepTimeComparison(stats["dense"], stats["slim"])


def measure_step_time(
    model: nn.Module,
    example_inputs,
    *,
    device: str | torch.device = "cpu",
    timing: Timing = STEP_TIMING,
) -> StepTime:
    """Forward+backward time of one model (see ``compare_step_times`` for two)."""
    device = torch.device(device)
    private, inputs = _prepared(model, example_inputs, device)
    times = time_interleaved({"model": _step(private, inputs, device)}, timing)["model"]
    batch = int(inputs[0].shape[0]) if inputs[0].dim() else 1
    return StepTime(str(device), batch, LatencyStat.from_times(batch, times))


__all__ = ["StepTime", "StepTimeComparison", "compare_step_times", "measure_step_time"]
