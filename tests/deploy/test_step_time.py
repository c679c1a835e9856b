"""Training step time (forward + backward) of a dense vs a slim proxy, interleaved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.deploy import compare_step_times, measure_step_time
from fxprune.deploy.profiling import Timing


def conv_net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 10)).eval()  # fmt: skip


QUICK = Timing(warmup=1, min_runs=6, min_seconds=0.2, max_seconds=8.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Two torch threads on two busy cores spend most of a small step waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_narrow_proxy_trains_measurably_faster():
    dense, slim = conv_net(64), conv_net(4)  # the 3x3 conv: 256x fewer MACs
    x = torch.randn(4, 3, 16, 16)
    result = compare_step_times(dense, slim, x, timing=QUICK)
    assert result.speedup > 1.5 and result.verdict == "faster"
    low, high = result.interval
    assert low <= result.speedup <= high
    assert result.dense.batch == 4 and result.dense.device == "cpu"
    assert all(p.grad is None for p in dense.parameters())  # the caller's model is untouched
    assert not dense.training
    assert result.to_dict()["verdict"] == "faster"


def test_one_model_step_time():
    step = measure_step_time(conv_net(8), (torch.randn(4, 3, 16, 16),), timing=QUICK)
    assert step.median_ms > 0 and step.stat.runs >= 6
