"""The masked-dense oracle itself."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
import fxprune.verify
from fxprune.surgery import slim
from fxprune.verify import masked_forward, verify_equivalence


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
    assert report.numeric_fraction == 1.0 and report.pruned_classes == 4


class PreNormMLP(nn.Module):
    """A LayerNorm'd residual stream (inexact) around an MLP hidden layer (exact)."""

    def __init__(self, width=16, hidden=32):
        super().__init__()
        self.emb = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.fc, self.proj = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):  # (B, T, 8)
        x = self.emb(x)
        x = x + self.proj(F.gelu(self.fc(self.norm(x))))
        return self.head(x)


X = torch.randn(2, 5, 8)


def pruned_prenorm(scorer="l1", ratio=0.5):
    torch.manual_seed(0)
    result = fxprune.prune(PreNormMLP().eval(), X, ratio=ratio, min_ratio=0.15, scorer=scorer)
    graph, keep = result.graph, result.keep
    residual = next(g for g in graph.groups if "emb.out_features" in g.members)
    hidden = next(g for g in graph.groups if "fc.out_features" in g.members)
    assert residual.inexact_reason is not None and hidden.inexact_reason is None
    # both kinds are pruned, so the check is per class
    assert not keep[residual.classes].all() and not keep[hidden.classes].all()
    return result, residual, hidden


@pytest.mark.parametrize("scorer,ratio", [("synflow", 0.85), ("l1", 0.5)])
def test_exact_classes_are_checked_numerically_next_to_inexact_ones(scorer, ratio):
    result, residual, hidden = pruned_prenorm(scorer, ratio)
    keep = result.keep
    report = verify_equivalence(result.graph, keep, result.model, (X,))
    assert report.passed and not report.exact, report.detail
    n_res = int((~keep[residual.classes]).sum())
    n_hidden = int((~keep[hidden.classes]).sum())
    assert report.pruned_classes == n_res + n_hidden
    assert report.numeric_fraction == pytest.approx(n_hidden / (n_res + n_hidden))
    assert 0 < report.numeric_fraction < 1
    assert report.max_abs_diff < 1e-5 and report.output_scale > 0.01
    assert f"{n_hidden} of {n_res + n_hidden} pruned channel classes" in report.detail


def test_the_numerical_part_catches_a_wrong_exact_class(monkeypatch):
    # a surgery bug in an exact class (a wrong MLP weight) must fail the check even though
    # the residual stream is inexact; before, the whole model fell back to shapes only
    result, _, _ = pruned_prenorm()

    def broken_slim(graph, keep):
        model = slim(graph, keep)
        with torch.no_grad():
            model.proj.weight[:, 0] += 1.0
        return model

    monkeypatch.setattr(fxprune.verify, "slim", broken_slim)
    report = verify_equivalence(result.graph, result.keep, result.model, (X,))
    assert not report.passed and report.max_abs_diff > 0.01, report.detail


def test_only_inexact_classes_pruned_checks_shapes():
    result, _, hidden = pruned_prenorm()
    keep = result.keep.copy()
    keep[hidden.classes] = True  # only the residual stream loses channels
    model = slim(result.graph, keep)
    report = verify_equivalence(result.graph, keep, model, (X,))
    assert report.passed and report.numeric_fraction == 0.0
    assert "none checked numerically" in report.detail


def test_wrong_output_shape_fails():
    result, _, _ = pruned_prenorm()
    wrong = nn.Sequential(nn.Linear(8, 2))
    report = verify_equivalence(result.graph, result.keep, wrong, (X,))
    assert not report.passed and "output shapes differ" in report.detail


def test_masked_forward_zeroes_pruned_hidden_channels():
    result, _, hidden = pruned_prenorm()
    with torch.no_grad():
        dense = result.graph.gm(X)
    everything = np.ones_like(result.keep)
    assert torch.equal(masked_forward(result.graph, everything, (X,)), dense)
    only_hidden = everything.copy()  # the exact classes alone: masking them changes the output
    only_hidden[hidden.classes] = result.keep[hidden.classes]
    ref = masked_forward(result.graph, only_hidden, (X,))
    assert ref.shape == dense.shape and not torch.allclose(ref, dense)


def test_an_all_zero_reference_output_is_not_counted_as_numerically_checked():
    # torchvision's ViT zero-initialises its classifier: comparing zeros proves nothing
    result, _, _ = pruned_prenorm()
    model = result.model
    for m in (model, result.graph.gm):
        with torch.no_grad():
            m.get_submodule("head").weight.zero_()
            m.get_submodule("head").bias.zero_()
    report = verify_equivalence(result.graph, result.keep, model, (X,))
    assert report.passed and report.numeric_fraction == 0.0
    assert "all zero" in report.detail


class MutatesItsList(nn.Module):
    """A callee that mutates the list it is given (torchvision's video swin does)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) * grow([1, x.size(0)])


@torch.fx.wrap
def grow(sizes):
    sizes[0] = 2  # mutates its argument, as the traced model's own code may
    return float(sum(sizes))


def test_the_oracle_hands_callees_plain_lists():
    torch.manual_seed(0)
    model = MutatesItsList().eval()
    x = torch.randn(2, 8)
    result = fxprune.prune(model, x, ratio=0.5, scorer="l1")
    report = verify_equivalence(result.graph, result.keep, result.model, (x,))
    assert report.passed and report.exact, report.detail
