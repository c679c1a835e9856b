"""``CostModel`` is exact for modules: at any keep mask it gives the MACs ``count_macs``
measures on the slim model, and its class costs are the MACs each class takes with it.
(Functional ops such as ``matmul`` count as constants: their rules have no
``expected_cost`` hook yet.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.cost import CostModel, count_macs
from fxprune.models import create_model
from fxprune.surgery import slim


class Mixed(nn.Module):
    """Grouped and depthwise convs, a transposed conv and a linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = torch.relu(self.up(torch.relu(self.dw(torch.relu(self.g(torch.relu(self.a(x))))))))
        y = y.mean((2, 3))
        return self.fc(y)


@pytest.mark.parametrize("build,shape", [(Mixed, (2, 3, 8, 8)),
                                         (lambda: create_model("resnet20"), (1, 3, 32, 32))])
def test_macs_of_a_mask_equal_the_slim_model(build, shape):
    x = torch.randn(*shape)
    graph = fxprune.analyze(build().eval(), x)
    cost = CostModel(graph)
    assert cost.total == count_macs(graph.gm, x)
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = (rng.random(graph.num_classes) < 0.6) | graph.class_frozen
        for space in graph.spaces.values():  # every dimension keeps one index
            keep[graph.atom_class[space.atoms[0]]] = True
        assert cost.macs(keep) == count_macs(slim(graph, keep), x)


def test_class_costs_are_the_macs_a_class_takes_with_it():
    x = torch.randn(1, 3, 32, 32)
    graph = fxprune.analyze(create_model("resnet20").eval(), x)
    cost = CostModel(graph)
    marginal, split = cost.class_costs(), cost.class_costs(split=True)
    for c in np.flatnonzero(~graph.class_frozen)[:5]:
        keep = np.ones(graph.num_classes, dtype=bool)
        keep[c] = False
        assert marginal[c] == pytest.approx(cost.total - cost.macs(keep))
    # split shares add up to the MACs that depend on channels (all of them here but
    # the classifier's frozen output side)
    assert split.sum() == pytest.approx(cost.total)
