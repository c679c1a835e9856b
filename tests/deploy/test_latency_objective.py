"""The latency budget's ``capacity`` objective: a channel's MACs weighted by its score
within its group, so the same latency keeps more MACs (known optimum on a fake table)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fxprune.api import analyze
from fxprune.cost import CostModel
from fxprune.deploy import prune_to_latency
from fxprune.deploy.latency_selection import LatencySelector, capacity_scores
from fxprune.deploy.latency_table import build_latency_table, layer_specs
from fxprune.errors import ConfigError

pytestmark = pytest.mark.onnx
pytest.importorskip("onnxruntime")


class TwoStageNet(nn.Module):
    """A 16x16 stage (many MACs per channel) and a 4x4 stage (few), 16 channels each."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        x = torch.relu(self.c(nn.functional.avg_pool2d(x, 4)))
        return self.fc(x.mean((2, 3)))


def example():
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


class OverheadTimer:
    """ms = MACs-proportional work + a cost per output channel that does not shrink with
    the image: at 4x4 a channel buys few MACs per millisecond, at 16x16 many."""

    def __call__(self, spec, cin, cout, spatial=None):
        pixels = math.prod(spatial or spec.input_shape[2:]) if spec.kind == "conv" else 1
        return 1e-4 * pixels * cin * cout + 0.02 * cout + 0.01


@pytest.fixture
def setup(tmp_path):
    model = TwoStageNet().eval()
    graph = analyze(model, example())
    specs = layer_specs(model, example())
    table = build_latency_table(specs, model_name="TwoStageNet", cache_dir=tmp_path,
                                timer=OverheadTimer())  # fmt: skip
    scores = np.zeros(graph.num_classes)
    groups = [g for g in graph.groups if g.prunable]
    for n, group in enumerate(groups):  # the 4x4 stage's channels score highest
        scores[group.classes] = np.linspace(1.0, 2.0, group.size) * (1 + 3 * n)
    return graph, specs, table, scores, groups


def test_capacity_scores_are_macs_weighted_by_the_score_within_the_group(setup):
    graph, _, _, scores, groups = setup
    values = capacity_scores(graph, scores)
    macs = CostModel(graph).class_costs(split=True)
    for group in groups:
        c = np.asarray(group.classes)
        assert np.array_equal(np.argsort(values[c], kind="stable"), np.argsort(scores[c], kind="stable"))
        assert values[c] == pytest.approx(macs[c] * scores[c] / scores[c].mean())
        assert values[c].mean() == pytest.approx(macs[c].mean())
    # equal scores: every class is worth exactly its MACs; all-zero scores likewise
    assert capacity_scores(graph, np.ones(graph.num_classes)) == pytest.approx(macs)
    assert capacity_scores(graph, np.zeros(graph.num_classes)) == pytest.approx(macs)


def best_by_brute_force(selector, values, budget):
    dense = selector.predict(selector.dense_widths())
    best, best_widths = -math.inf, None
    for widths in itertools.product(*selector.candidates):
        if selector.predict(list(widths)) <= budget * dense + 1e-12:
            kept = sum(values[o[:w]].sum() for o, w in zip(selector.order, widths))
            if kept > best:
                best, best_widths = kept, widths
    return best, best_widths


@pytest.mark.parametrize("budget", [0.7, 0.5])
def test_capacity_keeps_more_macs_at_the_same_predicted_latency(setup, budget):
    graph, specs, table, scores, _ = setup
    cost = CostModel(graph)
    chosen = {}
    for objective, values in (("score", scores), ("capacity", capacity_scores(graph, scores))):
        selector = LatencySelector(graph, specs, values, table, min_ratio=0.1)
        keep, predicted = selector.select(budget)
        assert predicted <= budget + 1e-9
        # the greedy comes within 2% of its own objective's optimum (brute force over the
        # candidate widths; a greedy, it may step past the exact knapsack optimum)
        kept = sum(values[o[:w]].sum() for o, w in zip(selector.order, selector.last_widths))
        optimum = best_by_brute_force(selector, values, budget)[0]
        assert optimum * 0.98 <= kept <= optimum + 1e-6
        chosen[objective] = (cost.macs(keep), float(scores[keep].sum()), selector.last_widths)
    # score keeps the 4x4 stage (high scores), capacity the 16x16 one (MACs per ms)
    assert chosen["capacity"][0] > 1.05 * chosen["score"][0], chosen
    assert chosen["score"][1] > chosen["capacity"][1], chosen


def test_prune_to_latency_records_the_objective(tmp_path):
    model = TwoStageNet().eval()

    def measure(slim_model):
        from fxprune.cost import count_macs

        return 0.1 + 0.9 * count_macs(slim_model, example()) / count_macs(model, example())

    result = prune_to_latency(model, example(), 0.5, scorer="l1", objective="capacity",
                              measure=measure, layer_timer=OverheadTimer(), cache_dir=tmp_path)  # fmt: skip
    assert result.summary()["objective"] == "capacity"
    assert result.result.plan.settings["latency"]["objective"] == "capacity"
    assert result.model(*example()).shape == (2, 10)
    with pytest.raises(ConfigError, match="capacity"):
        prune_to_latency(model, example(), 0.5, objective="macs", measure=measure,
                         layer_timer=OverheadTimer(), cache_dir=tmp_path)  # fmt: skip
