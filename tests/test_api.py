"""Public API behaviour: ratios, guards, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.errors import ConfigError, TraceError
from fxprune.models import create_model
from fxprune.selection import select_channels
from fxprune.verify import verify_equivalence


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch: not traceable
            return self.conv(x)
        return x


def test_untraceable_model_names_module_and_line():
    with pytest.raises(TraceError) as e:
        fxprune.prune(ControlFlow(), torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg
    assert "test_api.py" in msg and "leaf" in msg


def test_wrong_input_shape_names_node():
    model = create_model("resnet20")
    with pytest.raises(TraceError, match="conv1") as e:
        fxprune.prune(model, torch.randn(1, 5, 32, 32))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ratio,min_ratio", [(1.0, 0.1), (-0.1, 0.1), (0.5, 1.5), (0.5, -1)])
def test_out_of_range_ratios(ratio, min_ratio):
    with pytest.raises(ConfigError):
        fxprune.prune(create_model("resnet20"), torch.randn(1, 3, 32, 32), ratio=ratio,
                      min_ratio=min_ratio)


def test_unknown_scorer():
    with pytest.raises(ConfigError, match="unknown scorer"):
        fxprune.prune(create_model("resnet20"), torch.randn(1, 3, 32, 32), scorer="nope")


def test_ratio_zero_keeps_everything_and_equals_dense():
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    r = fxprune.prune(model, x, ratio=0.0)
    assert r.keep.all() and r.params_after == r.params_before
    with torch.no_grad():
        assert torch.allclose(r.model(x), model(x), atol=1e-6)


def test_leaf_modules_are_respected():
    class Odd(nn.Module):
        def forward(self, x):
            return x.flip(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.odd, self.b = nn.Conv2d(3, 8, 1), Odd(), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.odd(self.a(x)))

    g = fxprune.analyze(Net(), torch.randn(1, 3, 4, 4), leaf_modules=[Odd])
    assert [u.target.split()[0] for u in g.unhandled] == ["odd"]
    assert not g.prunable_groups()


def _crafted_graph(sizes):
    """A chain of convs whose groups have the given sizes."""
    layers, c = [], 3
    for s in sizes:
        layers += [nn.Conv2d(c, s, 1), nn.ReLU()]
        c = s
    layers.append(nn.Conv2d(c, 2, 1))
    return fxprune.analyze(nn.Sequential(*layers), torch.randn(1, 3, 2, 2))


def _scores(g, per_group):
    """Class scores from one array per prunable group (frozen classes: +inf)."""
    scores = np.full(g.num_classes, np.inf)
    for gr, s in zip([gr for gr in g.groups if gr.prunable], per_group):
        scores[gr.classes] = s
    return scores


def test_percentile_rule_and_min_ratio_guard_exact_counts():
    g = _crafted_graph([10, 20, 30])
    assert [gr.size for gr in g.groups if gr.prunable] == [10, 20, 30]
    # group 0 gets the lowest scores, so the global cut takes it all before the guard
    scores = _scores(g, [np.arange(10.0), 100 + np.arange(20.0), 50 + np.arange(30.0)])
    keep = select_channels(g, scores, ratio=0.5, min_ratio=0.15)
    prunable = [gr for gr in g.groups if gr.prunable]
    counts = [int(keep[gr.classes].sum()) for gr in prunable]
    # 60 channels, 30 pruned: all of group 0 (10) and the 20 lowest of group 2 (50..69)
    # -> group 0 restored to ceil(0.15 * 10) = 2 of its best (8, 9)
    assert counts == [2, 20, 10]
    assert keep[prunable[0].classes].tolist() == [False] * 8 + [True, True]
    keep = select_channels(g, scores, ratio=0.9, min_ratio=0.0)
    # 54 pruned: groups 0 and 2 entirely, group 1 keeps its 6 best; "never zero" gives
    # groups 0 and 2 their single best channel back
    assert [int(keep[gr.classes].sum()) for gr in prunable] == [1, 6, 1]
    keep = select_channels(g, scores, ratio=0.9, min_ratio=0.0, round_to=4)
    counts = [int(keep[gr.classes].sum()) for gr in prunable]
    assert all(c % 4 == 0 or c == size for c, size in zip(counts, [10, 20, 30]))
    assert min(counts) >= 1


def test_never_prunes_a_group_to_zero():
    g = _crafted_graph([4, 4])
    keep = select_channels(g, _scores(g, [np.arange(4.0), np.arange(4.0)]), ratio=0.99,
                           min_ratio=0.0)
    assert all(keep[gr.classes].sum() >= 1 for gr in g.groups)


def test_resnet56_min_ratio_every_layer_keeps_15_percent():
    model = create_model("resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    r = fxprune.prune(model, x, ratio=0.85, min_ratio=0.15, scorer="l1")
    dense = dict(model.named_modules())
    for name, m in r.model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= math.ceil(0.15 * dense[name].out_channels), name
            assert m.in_channels >= math.ceil(0.15 * dense[name].in_channels) or name == "conv1"
    assert verify_equivalence(r.graph, r.keep, r.model, (x,)).passed
