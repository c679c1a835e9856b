"""Property test: random conv nets built from coupling patterns always slim to a model
equal to the masked dense one (the oracle), whatever gets pruned."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.verify import verify_equivalence


class Block(nn.Module):
    def __init__(self, kind: str, c: int, width: int):
        super().__init__()
        self.kind = kind
        self.c_out = c
        if kind == "conv":
            self.conv, self.bn = nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width)
            self.c_out = width
        elif kind == "res":
            self.a, self.bna = nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width)
            self.b, self.bnb = nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c)
        elif kind == "dw":  # inverted residual with a depthwise channel multiplier of 2
            self.pw = nn.Conv2d(c, width, 1)
            self.dw = nn.Conv2d(width, 2 * width, 3, padding=1, groups=width)
            self.pj, self.bn = nn.Conv2d(2 * width, c, 1), nn.BatchNorm2d(c)
        elif kind == "cat":
            self.a, self.b = nn.Conv2d(c, width, 1), nn.Conv2d(c, 3, 3, padding=1)
            self.c_out = width + 3
        elif kind == "se":
            self.f1, self.f2 = nn.Conv2d(c, max(1, c // 2), 1), nn.Conv2d(max(1, c // 2), c, 1)
        elif kind == "split":
            self.c_out = c - c // 2 + width
            self.conv = nn.Conv2d(c // 2, width, 1)

    def forward(self, x):
        k = self.kind
        if k == "conv":
            return F.relu(self.bn(self.conv(x)))
        if k == "res":
            return F.relu(x + self.bnb(self.b(F.relu(self.bna(self.a(x))))))
        if k == "dw":
            return x + self.bn(self.pj(F.relu6(self.dw(F.relu6(self.pw(x))))))
        if k == "cat":
            return torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        if k == "se":
            s = torch.sigmoid(self.f2(F.relu(self.f1(x.mean((2, 3), keepdim=True)))))
            return x * s
        half = x.shape[1] // 2
        p, q = x[:, :half], x[:, half:]
        return torch.cat([q, F.relu(self.conv(p))], dim=1)


class RandNet(nn.Module):
    def __init__(self, spec, pool: bool):
        super().__init__()
        c = 3
        blocks = []
        for kind, width in spec:
            if kind == "split" and c < 2:
                kind = "conv"
            blocks.append(Block(kind, c, width))
            c = blocks[-1].c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.fc = nn.Linear(c if pool else c * 4 * 4, 5)

    def forward(self, x):  # x: (N, 3, 8, 8)
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1) if self.pool else F.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


block = st.tuples(st.sampled_from(["conv", "res", "dw", "cat", "se", "split"]),
                  st.integers(2, 10))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(block, min_size=1, max_size=6), pool=st.booleans(),
       ratio=st.floats(0.1, 0.9), min_ratio=st.floats(0.0, 0.5), seed=st.integers(0, 10_000))
def test_random_nets_match_oracle(spec, pool, ratio, min_ratio, seed):
    torch.manual_seed(seed)
    model = RandNet(spec, pool).eval()
    for m in model.modules():  # non-trivial BN statistics so masking mistakes would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    r = fxprune.prune(model, x, ratio=ratio, min_ratio=min_ratio, scorer="random")
    rep = verify_equivalence(r.graph, r.keep, r.model, (x,))
    assert rep.exact and rep.passed, rep.detail
    assert r.params_after <= r.params_before
    assert not r.graph.unhandled
