"""Sizes read from one tensor and used to reshape another must not go stale."""

from __future__ import annotations

import torch
from torch import nn

from tests.harness import prune_and_check


class ForeignSize(nn.Module):  # the pattern of torchvision's MaxViT attention
    def __init__(self):
        super().__init__()
        self.hidden, self.stem = nn.Linear(8, 12), nn.Linear(12, 16)
        self.qkv, self.out = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(torch.relu(self.hidden(x)))
        B, P, D = x.size()
        y = self.qkv(x).reshape(B, P, 2, 8).reshape(B, P, D)
        return self.out(y)


class OwnSize(nn.Module):  # sizes of the tensor being reshaped are fine
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y.reshape(n, c * h * w))


def test_size_from_another_tensor_is_rewritten():
    # D, read from stem's output, sizes qkv's channel dim: the slim graph gets qkv's kept
    # count there (fxprune.ops.shapes), so both prune and the slim model equals the oracle
    r = prune_and_check(ForeignSize(), torch.randn(2, 5, 8), ratio=0.5)
    assert r.model.stem.out_features < 16 and r.model.qkv.out_features < 16
    assert r.model.hidden.out_features < 12


def test_own_size_still_prunes():
    r = prune_and_check(OwnSize(), torch.randn(2, 3, 4, 4), ratio=0.5)
    assert r.model.a.out_channels < 8
