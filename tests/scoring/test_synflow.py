"""Structured Synflow, SNIP and the FLOPs-aware selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.errors import ConfigError, ScoreError
from fxprune.models import create_model
from fxprune.scoring import SynflowScorer, class_scores


def known_mlp(signs=None):
    """Hidden unit j has weights (j + 1) * sign_j: Synflow ranks it by (j + 1) * sign_j."""
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    signs = signs or [1] * 6
    with torch.no_grad():
        for j in range(6):
            net[0].weight[j] = (j + 1) * signs[j] * 0.1
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)
        net[2].bias.zero_()
    return net


def test_synflow_ranking_known_by_construction():
    net, x = known_mlp(), torch.randn(1, 4)
    g = fxprune.analyze(net, x)
    scores = class_scores(g, SynflowScorer()(g, (x,)))
    hidden = g.prunable_groups()[0].classes
    # dR/dW1[j, i] = sum_k W2[k, j] = 3 for an input of ones: score_j = 3 * 0.1 * (j + 1)
    assert np.allclose(scores[hidden], 0.3 * np.arange(1, 7))
    r = fxprune.prune(net, x, ratio=0.5, min_ratio=0.0, scorer="synflow")
    assert r.plan.modules["0"]["out_features"] == [3, 4, 5]


def test_signed_default_vs_linearized():
    signs = [1, 1, -1, 1, 1, 1]  # unit 2 is "dead" for an input of ones (ReLU cuts it)
    net, x = known_mlp(signs), torch.randn(1, 4)
    r = fxprune.prune(net, x, ratio=0.2, min_ratio=0.0, scorer="synflow")
    assert 2 not in r.plan.modules["0"]["out_features"]
    lin = fxprune.scoring.get_scorer("synflow", linearize=True)
    g = fxprune.analyze(net, x)
    s = class_scores(g, lin(g, (x,)))[g.prunable_groups()[0].classes]
    assert np.allclose(s, 0.3 * np.arange(1, 7))  # absolute weights: unit 2 alive again


def test_deep_nets_do_not_overflow():
    model = create_model("resnet110").eval()
    g = fxprune.analyze(model, torch.randn(1, 3, 32, 32))
    s = class_scores(g, SynflowScorer()(g, (torch.randn(1, 3, 32, 32),)))
    assert np.isfinite(s[~g.class_frozen]).all()
    assert np.abs(s[~g.class_frozen]).max() > 0


def test_non_finite_score_names_the_layer():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(ScoreError, match="module '0'"):
        fxprune.prune(net, torch.randn(1, 4), scorer="synflow")


def test_resnet56_paper_setting_trains_and_keeps_floor():
    torch.manual_seed(0)
    model = create_model("resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    r = fxprune.prune(model, x, ratio=0.85, min_ratio=0.15, scorer="synflow")
    dense = dict(model.named_modules())
    for name, m in r.model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= math.ceil(0.15 * dense[name].out_channels), name
    assert r.params_after < r.params_before / 5
    slim = r.model.train()
    opt = torch.optim.SGD(slim.parameters(), lr=0.05, momentum=0.9)
    data, target = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(slim(data), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_snip_needs_data():
    model, x = create_model("resnet20"), torch.randn(4, 3, 32, 32)
    with pytest.raises(ConfigError, match="needs a data batch"):
        fxprune.prune(model, x, scorer="snip")
    r = fxprune.prune(model, x, ratio=0.5, scorer="snip", data=(x, torch.randint(0, 10, (4,))))
    assert r.params_after < r.params_before


def test_flops_aware_rules_cut_more_macs():
    torch.manual_seed(0)
    model, x = create_model("resnet56").eval(), torch.randn(1, 3, 32, 32)
    plain = fxprune.prune(model, x, ratio=0.85, min_ratio=0.15, scorer="synflow")
    aware = fxprune.prune(model, x, ratio=0.85, min_ratio=0.15, scorer="synflow_flops")
    assert aware.macs_reduction > plain.macs_reduction
    target = fxprune.prune(model, x, min_ratio=0.05, scorer="synflow", target="flops=0.3")
    assert target.macs_after <= 0.3 * target.macs_before * 1.001
    assert target.macs_after >= 0.2 * target.macs_before  # the smallest cut that reaches it
    with pytest.raises(ConfigError, match="target"):
        fxprune.prune(model, x, target="flops=2")
