"""MACs and params counted from the traced graph, against published figures."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.cost import macs_report
from fxprune.models import create_model


@pytest.mark.parametrize("name,lo,hi", [("resnet56", 120e6, 130e6), ("resnet20", 39e6, 42e6)])
def test_cifar_resnet_macs(name, lo, hi):
    assert lo <= fxprune.count_macs(create_model(name), torch.randn(1, 3, 32, 32)) <= hi


@pytest.mark.parametrize("name,lo,hi", [("resnet50", 4.0e9, 4.2e9), ("mobilenet_v2", 290e6, 320e6)])
def test_torchvision_macs(name, lo, hi):
    model = torchvision.models.get_model(name, weights=None)
    assert lo <= fxprune.count_macs(model, torch.randn(1, 3, 224, 224)) <= hi


def test_macs_are_per_example_and_match_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 5))
    report = macs_report(net, torch.randn(4, 3, 4, 4))  # batch 4: figures are per example
    conv1 = 8 * 16 * 3 * 9
    dw = 8 * 16 * 1 * 9
    fc = 5 * 128
    assert report.macs == conv1 + dw + fc
    assert report.params == sum(p.numel() for p in net.parameters())
    assert report.per_module == {"0": conv1, "2": dw, "4": fc}


def test_slim_macs_fall_with_pruning():
    model = create_model("resnet20")
    r = fxprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    assert r.macs_after < r.macs_before
    assert r.macs_after == fxprune.count_macs(r.model, torch.randn(2, 3, 32, 32))
