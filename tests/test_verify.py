"""The masked-dense oracle itself."""

import torch
from torch import nn

import fxprune
from fxprune.verify import verify_equivalence


def test_a_pruned_channel_holding_inf_reads_zero_not_nan():
    # channels 0-3 of conv1 are tiny (L1 prunes them) and carry an infinite bias: the slim
    # model has no such channels, so the masked reference must read 0 there, not inf * 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 1e-3
        model[0].bias[:4] = float("inf")
    x = torch.randn(1, 3, 8, 8)
    result = fxprune.prune(model, x, ratio=0.5, min_ratio=0.15, scorer="l1")
    kept = result.plan.to_dict()["modules"]["0"]["out_channels"]
    assert kept == [4, 5, 6, 7]
    assert torch.isfinite(result.model(x)).all()
    report = verify_equivalence(result.graph, result.keep, result.model, (x,))
    assert report.passed and report.exact, report.detail
