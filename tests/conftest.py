"""Shared test settings: deterministic seeds and one torch thread per xdist worker
(two workers on a two-core machine would otherwise oversubscribe the CPU)."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
