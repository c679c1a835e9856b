"""Rules for the user's own layers and functions: the public registration API, checked
against the masked-dense oracle, and the README's example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.cost import CostModel, count_macs
from fxprune.ops import (
    FUNCTION_RULES,
    MODULE_RULES,
    ModuleRule,
    module_rule_for,
    register_function,
    register_module,
)
from fxprune.ops.common import elementwise
from tests.harness import group_members, prune_and_check

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS = [("synflow", 0.85, 0.15), ("l1", 0.5, 0.15)]


@pytest.fixture
def registry():
    """Register for one test only: the keys a test adds are removed afterwards."""
    modules, functions = set(MODULE_RULES), set(FUNCTION_RULES)
    yield
    for key in set(MODULE_RULES) - modules:
        del MODULE_RULES[key]
    for key in set(FUNCTION_RULES) - functions:
        del FUNCTION_RULES[key]


class Gate(nn.Module):
    """Per-channel gate ``x * sigmoid(logit[c])``; untraceable on purpose (a leaf)."""

    def __init__(self, channels: int):
        super().__init__()
        self.logit = nn.Parameter(torch.randn(channels))

    def forward(self, x):  # (N, C, H, W)
        if x.sum() > 1e9:  # data-dependent: torch.fx stops here
            x = x / 2
        return x * torch.sigmoid(self.logit).view(1, -1, 1, 1)


class GateRule(ModuleRule):
    def propagate(self, b, node, module, name):
        labels = list(b.labels(node.args[0]))
        space = b.module_space(name, "channels", len(module.logit), producer=False)
        b.tie(space, labels[1], f"{name}.channels")
        return labels

    def slice_(self, module, keep):
        if "channels" in keep:
            module.logit = nn.Parameter(module.logit.data[keep["channels"]].clone())

    def macs(self, node, module):
        return 0


def gated_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), Gate(12), nn.ReLU(),
        nn.Conv2d(12, 10, 3, padding=1), Gate(10), nn.ReLU(), nn.Conv2d(10, 4, 1),
    )


X = torch.randn(2, 3, 8, 8)


def test_readme_example_runs(registry, capsys):
    text = README.read_text()
    section = text[text.index("## Writing a handler for your own layer"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102 - the README example
    assert capsys.readouterr().out.strip() == "torch.Size([8])"


def test_unregistered_leaf_freezes_its_channels():
    graph = fxprune.analyze(gated_net().eval(), X)
    assert [u.target for u in graph.unhandled][:1] == ["2 (Gate)"]
    assert group_members(graph) == []  # both gated streams are kept whole


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_registered_module_rule_prunes_and_matches_oracle(registry, scorer, ratio, min_ratio):
    register_module(Gate)(GateRule)
    graph = fxprune.analyze(gated_net().eval(), X)
    assert not graph.unhandled
    assert group_members(graph) == [
        {"0.out_channels", "1.num_features", "2.channels", "4.in_channels"},
        {"4.out_channels", "5.channels", "7.in_channels"},
    ]
    result = prune_and_check(gated_net(), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer)
    slim = result.model
    assert slim.get_submodule("2").logit.shape[0] == slim.get_submodule("0").out_channels < 12
    assert slim.get_submodule("5").logit.shape[0] == slim.get_submodule("4").out_channels < 10
    # the plan names the user's space and re-applies to a fresh model
    assert len(result.plan.modules["2"]["channels"]) == slim.get_submodule("2").logit.shape[0]
    again = fxprune.apply_plan(gated_net().eval(), result.plan, X)
    torch.testing.assert_close(again(X), slim(X))


@torch.fx.wrap
def soft_threshold(x, t: float):
    """Elementwise, but torch.fx cannot look inside (wrapped): a call_function node."""
    return torch.sign(x) * F.relu(x.abs() - t)


class Shrink(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.b(soft_threshold(self.a(x), 0.1))


def test_unregistered_function_freezes():
    graph = fxprune.analyze(Shrink().eval(), X)
    assert graph.unhandled and graph.unhandled[0].target == "soft_threshold"
    assert group_members(graph) == []


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_registered_function_rule(registry, scorer, ratio, min_ratio):
    register_function(soft_threshold)(elementwise)
    graph = fxprune.analyze(Shrink().eval(), X)
    assert group_members(graph) == [{"a.out_channels", "b.in_channels"}]
    result = prune_and_check(Shrink(), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer)
    assert result.model.a.out_channels < 8


def test_registering_a_key_twice_is_an_error(registry):
    register_module(Gate)(GateRule)
    with pytest.raises(KeyError, match="already registered"):
        register_module(Gate)(GateRule)
    with pytest.raises(KeyError, match="already registered"):
        register_function(torch.relu)(elementwise)


class OwnForwardConv(nn.Conv2d):
    """A Conv2d subclass with its own forward: not a conv as far as rules go."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1) * 2


class SameForwardConv(nn.Conv2d):
    pass


def test_one_lookup_rule_for_subclasses():
    assert module_rule_for(SameForwardConv(3, 4, 1)) is MODULE_RULES[nn.Conv2d]
    assert module_rule_for(OwnForwardConv(3, 4, 1)) is None


def test_subclass_with_own_forward_is_unknown_everywhere():
    """Graph, MAC counting, scorers and the cost model all treat it as one unknown leaf."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), OwnForwardConv(8, 8, 3),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    graph = fxprune.analyze(model, X, leaf_modules=[OwnForwardConv])
    assert [u.target for u in graph.unhandled] == ["2 (OwnForwardConv)"]
    assert "2.out_channels" not in graph.spaces and "2.in_channels" not in graph.spaces
    assert group_members(graph) == []  # frozen on both sides
    cost = CostModel(graph)
    dense = 8 * 8 * (8 * 3 + 4 * 8)  # per example: the two 1x1 convs the rules know
    assert cost.total == dense
    # a channel of the first conv costs its 3 input MACs per pixel, nothing from the leaf
    first = graph.atom_class[graph.spaces["0.out_channels"].atoms]
    assert np.all(cost.class_costs()[first] == 8 * 8 * 3)
    # count_macs estimates the leaf by tracing it alone (its F.conv2d: 8*8*9 per pixel)
    assert count_macs(model, X) == dense + 8 * 8 * (8 * 8 * 9)
