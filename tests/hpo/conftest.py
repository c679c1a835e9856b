"""Shared pieces of the HPO tests: a tiny CNN in a model file, one torch thread, and a
config maker with budgets small enough for the whole directory to run in a few minutes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from hpo.driver import HpoConfig
from hpo.space import SearchSpace

TINY_CNN = textwrap.dedent('''
    import time

    from torch import nn


    class TinyCNN(nn.Module):
        """conv-bn-relu x2, global average pool, linear: prunable, trains in milliseconds."""

        def __init__(self, num_classes=10, step_delay=0.0):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            )
            self.fc = nn.Linear(32, num_classes)
            self.step_delay = step_delay

        def forward(self, x):
            if self.training and self.step_delay:
                time.sleep(self.step_delay)
            return self.fc(self.features(x).mean((2, 3)))


    def build_model(num_classes=10):
        return TinyCNN(num_classes)


    def slow_model(num_classes=10):
        return TinyCNN(num_classes, step_delay=0.25)
''')

# A space whose batch size is fixed: trials then take a known number of steps.
FAST_SPACE = SearchSpace(lr=(1e-3, 0.2), batch_size=64)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, OpenMP threads
    spinning against each other make tiny models 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_cnn.py"
    path.write_text(TINY_CNN)
    return path


@pytest.fixture
def make_config(tmp_path: Path, model_file: Path):
    """``make_config(**changes)``: a tiny synthetic-data config writing under tmp_path."""

    def make(**changes: object) -> HpoConfig:
        defaults = {"model": str(model_file), "data": "synthetic", "out": str(tmp_path / "run"),
                    "sampler": "random", "pruner": "none", "trials": 4, "epochs": 2, "seeds": 0,
                    "kendall_k": 0, "space": FAST_SPACE, "threads": 1}
        return HpoConfig(**{**defaults, **changes})

    return make
