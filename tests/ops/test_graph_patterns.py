"""One tiny module per coupling pattern: exact groups, then slim == masked dense."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from tests.harness import group_members, prune_and_check

torch.manual_seed(0)
X = torch.randn(2, 8, 12, 12)


def graph_of(model, x=X):
    return fxprune.analyze(model.eval(), x)


def prunable_sizes(graph):
    return [g.size for g in graph.groups if g.prunable]


class Chain(nn.Module):  # conv -> bn -> relu -> conv -> pool -> fc
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_chain_groups_and_slim():
    g = graph_of(Chain())
    assert group_members(g) == [
        {"conv1.out_channels", "bn1.num_features", "conv2.in_channels"},
        {"conv2.out_channels", "bn2.num_features", "fc.in_features"},
    ]
    assert prunable_sizes(g) == [16, 24]
    frozen = [gr for gr in g.groups if not gr.prunable]
    assert {m for gr in frozen for m in gr.members} == {"conv1.in_channels", "fc.out_features"}
    r = prune_and_check(Chain(), X)
    assert r.model.conv1.out_channels == r.model.bn1.num_features == r.model.conv2.in_channels
    assert r.model.conv1.weight.shape[0] == r.model.conv1.out_channels < 16
    assert r.model.fc.out_features == 5


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(8, 16, 1)
        self.a = nn.Conv2d(16, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.b(F.relu(self.a(x)))
        x = x + y  # residual: stem and b outputs are cut together
        x += self.b(F.relu(self.a(x)))  # in-place add, shared modules
        return self.head(x)


def test_residual_add_couples_streams():
    g = graph_of(Residual())
    assert group_members(g) == [
        {"stem.out_channels", "a.in_channels", "b.out_channels", "head.in_channels"},
        {"a.out_channels", "b.in_channels"},
    ]
    prune_and_check(Residual(), X)


class Depthwise(nn.Module):
    def __init__(self, multiplier=1):
        super().__init__()
        self.pw = nn.Conv2d(8, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12 * multiplier, 3, padding=1, groups=12)
        self.bn2 = nn.BatchNorm2d(12 * multiplier)
        self.out = nn.Conv2d(12 * multiplier, 6, 1)

    def forward(self, x):
        return self.out(F.relu6(self.bn2(self.dw(F.relu6(self.bn(self.pw(x)))))))


@pytest.mark.parametrize("multiplier", [1, 3])
def test_depthwise_and_channel_multiplier(multiplier):
    g = graph_of(Depthwise(multiplier))
    assert group_members(g) == [{
        "pw.out_channels", "bn.num_features", "dw.in_channels", "dw.out_channels",
        "bn2.num_features", "out.in_channels",
    }]
    assert prunable_sizes(g) == [12]  # one unit = one input channel and its multiplier outputs
    r = prune_and_check(Depthwise(multiplier), X)
    dw = r.model.dw
    assert dw.groups == dw.in_channels < 12 and dw.out_channels == multiplier * dw.in_channels


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 1)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.b = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.g(F.relu(self.a(x)))))


def test_grouped_conv_prunes_whole_groups():
    g = graph_of(Grouped())
    assert prunable_sizes(g) == [4]  # four conv groups, each with 4 inputs and 8 outputs
    r = prune_and_check(Grouped(), X, ratio=0.5, min_ratio=0.0)
    conv = r.model.g
    assert conv.groups == 2 and conv.in_channels == 8 and conv.out_channels == 16


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 12, 2, stride=2)
        self.bn = nn.BatchNorm2d(12)
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.up(x))))


def test_conv_transpose():
    g = graph_of(Transposed())
    assert group_members(g) == [{"up.out_channels", "bn.num_features", "out.in_channels"}]
    r = prune_and_check(Transposed(), X)
    assert r.model.up.weight.shape[1] == r.model.up.out_channels < 12


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 32), nn.Linear(32, 16), nn.Linear(16, 3)
        self.bn = nn.BatchNorm1d(32)

    def forward(self, x):
        return self.l3(F.gelu(self.l2(F.dropout(F.relu(self.bn(self.l1(x))), 0.1, self.training))))


def test_linear_mlp():
    x = torch.randn(4, 8)
    g = graph_of(MLP(), x)
    assert prunable_sizes(g) == [32, 16]
    prune_and_check(MLP(), x)


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = x * s  # broadcast gate: fc2's outputs are x's channels
        return self.head(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def test_squeeze_excitation_gate():
    g = graph_of(SE())
    assert group_members(g) == [
        {"conv.out_channels", "fc1.in_channels", "fc2.out_channels", "head.in_features"},
        {"fc1.out_channels", "fc2.in_channels"},
    ]
    prune_and_check(SE(), X)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)  # offsets 0..5 and 6..15
        return self.c(F.relu(self.bn(y)))


def test_concat_offsets():
    g = graph_of(Concat())
    assert prunable_sizes(g) == [6, 10]
    r = prune_and_check(Concat(), X)
    keep_c = r.plan.modules["c"]["in_channels"]
    keep_a = r.plan.modules.get("a", {}).get("out_channels", list(range(6)))
    keep_b = r.plan.modules.get("b", {}).get("out_channels", list(range(10)))
    assert keep_c == keep_a + [6 + i for i in keep_b]
    assert r.plan.modules["bn"]["num_features"] == keep_c


class SplitChunk(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(8, 16, 1)
        self.b1, self.b2 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "chunk":
            p, q = y.chunk(2, dim=1)
        elif self.how == "split":
            p, q = torch.split(y, [8, 8], dim=1)
        else:
            p, q = y[:, :8], y[:, 8:]
        return self.b1(p) + self.b2(q)


@pytest.mark.parametrize("how", ["chunk", "split", "slice"])
def test_split_chunk_slice(how):
    g = graph_of(SplitChunk(how))
    assert prunable_sizes(g) == [16]  # b1 + b2 reach the output: frozen
    r = prune_and_check(SplitChunk(how), X, ratio=0.6)
    assert r.model.b1.in_channels + r.model.b2.in_channels == r.model.a.out_channels


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 6, 3, stride=2, padding=1)  # (N, 6, 6, 6)
        self.pool = nn.MaxPool2d(2)  # (N, 6, 3, 3)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).view(x.shape[0], -1))


def test_flatten_into_linear():
    g = graph_of(FlattenLinear())
    assert group_members(g) == [{"conv.out_channels", "fc.in_features"}]
    r = prune_and_check(FlattenLinear(), X)
    kept = r.plan.modules["conv"]["out_channels"]
    assert r.plan.modules["fc"]["in_features"] == [c * 9 + s for c in kept for s in range(9)]


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 1)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 12)
        self.out = nn.Linear(12, 16)
        self.proj = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)  # (N, H, W, C): channel axis moves
        x = x + self.out(F.gelu(self.fc(self.ln(x))))
        return self.proj(x.transpose(1, 3).transpose(2, 3))


def test_permute_transpose_layernorm_is_inexact():
    g = graph_of(ChannelsLast())
    assert group_members(g) == [
        {"conv.out_channels", "ln.normalized_shape", "fc.in_features", "out.out_features",
         "proj.in_channels"},
        {"fc.out_features", "out.in_features"},
    ]
    assert g.groups[0].inexact_reason is not None and "LayerNorm" in g.groups[0].inexact_reason
    # pruning only the MLP hidden group stays exact; pruning the LN stream is structural only
    prune_and_check(ChannelsLast(), X, ratio=0.5, exact=False)


class Shuffle(nn.Module):
    def __init__(self, hardcoded):
        super().__init__()
        self.hardcoded = hardcoded
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.size()
        if self.hardcoded:
            y = y.view(n, 2, 6, h, w)
        else:
            y = y.view(n, 2, c // 2, h, w)
        y = y.transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.c(y)


@pytest.mark.parametrize("hardcoded", [False, True])
def test_channel_shuffle(hardcoded):
    g = graph_of(Shuffle(hardcoded))
    # position j of branch a is shuffled next to position j of branch b: cut together
    assert prunable_sizes(g) == [6]
    r = prune_and_check(Shuffle(hardcoded), X)
    assert r.model.a.out_channels == r.model.b.out_channels < 6


class Spatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 10, 3, padding=1)
        self.drop, self.id = nn.Dropout2d(0.2), nn.Identity()
        self.up = nn.Upsample(scale_factor=2)
        self.b = nn.Conv2d(10, 3, 3)

    def forward(self, x):
        y = self.id(self.drop(self.a(x)))
        y = F.interpolate(self.up(y), scale_factor=0.5, mode="bilinear")
        y = F.pad(y, (1, 1, 1, 1))
        return self.b(F.avg_pool2d(y, 2))


def test_interpolate_pad_dropout_identity():
    g = graph_of(Spatial())
    assert group_members(g) == [{"a.out_channels", "b.in_channels"}]
    prune_and_check(Spatial(), X)


class LayerScaleFunctional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 8, 3, 3) * 0.1)
        self.b1 = nn.Parameter(torch.randn(16) * 0.1)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1) + 0.5)  # layer scale
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        return self.out(self.gamma * F.relu(y))


def test_get_attr_layer_scale_and_functional_conv():
    g = graph_of(LayerScaleFunctional())
    assert group_members(g) == [{"w1#0", "b1#0", "gamma#0", "out.in_channels"}]
    r = prune_and_check(LayerScaleFunctional(), X)
    kept = r.plan.parameters["w1"]["keep"]
    assert r.plan.parameters["gamma"] == {"dim": 0, "keep": kept}
    assert r.model.gamma.shape[0] == r.model.w1.shape[0] == len(kept) < 16


class Norms(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.norm = {
            "group": nn.GroupNorm(4, 16),
            "instance": nn.InstanceNorm2d(16, affine=True),
            "layer": nn.GroupNorm(1, 16),
        }[kind]
        self.b = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.b(F.relu(self.norm(self.a(x))))


@pytest.mark.parametrize("kind,units,exact", [("group", 4, True), ("instance", 16, True),
                                              ("layer", 16, False)])
def test_group_instance_layer_norm(kind, units, exact):
    g = graph_of(Norms(kind))
    assert prunable_sizes(g) == [units]
    r = prune_and_check(Norms(kind), X, exact=exact)
    if kind == "group":
        assert r.model.norm.num_groups * 4 == r.model.norm.num_channels < 16


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16)
        self.b = nn.Conv1d(16, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.a(x))))


def test_conv1d():
    x = torch.randn(2, 8, 20)
    assert prunable_sizes(graph_of(Conv1dNet(), x)) == [16]
    prune_and_check(Conv1dNet(), x)


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.cumsum(self.a(x), dim=1)  # mixes channels in an order we don't model
        return self.c(F.relu(self.b(y)))


def test_unknown_op_freezes_and_is_reported():
    g = graph_of(Unknown())
    assert [u.node for u in g.unhandled] == ["cumsum"]
    frozen = {m for gr in g.groups if not gr.prunable for m in gr.members}
    assert {"a.out_channels", "b.in_channels"} <= frozen
    assert any("cumsum" in (gr.frozen_reason or "") for gr in g.groups)
    assert group_members(g) == [{"b.out_channels", "c.in_channels"}]
    r = prune_and_check(Unknown(), X)
    assert r.model.a.out_channels == 16


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 6, 1)

    def forward(self, x):
        f = F.relu(self.a(x))
        return {"features": f, "logits": self.b(f).mean((2, 3))}


def test_outputs_are_never_pruned():
    g = graph_of(TwoOutputs())
    assert not g.prunable_groups()
    assert all("output" in (gr.frozen_reason or "") for gr in g.groups if gr.frozen_classes
               and "a.out_channels" in gr.members)


def test_inplace_relu_and_iadd():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
            self.relu = nn.ReLU(inplace=True)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.relu(self.a(x))
            y += self.b(y)
            y.mul_(2.0)
            return self.c(y)

    g = graph_of(M())
    assert group_members(g) == [{"a.out_channels", "b.in_channels", "b.out_channels",
                                 "c.in_channels"}]
    prune_and_check(M(), X)


def test_handler_registry_rejects_duplicates():
    from fxprune.ops import register_function

    with pytest.raises(KeyError, match="already registered"):
        register_function(operator.add)(lambda b, n: None)


class Unflatten(nn.Module):
    """A channel dim split by unflatten: its constant size must follow the pruning."""

    def __init__(self, method: bool):
        super().__init__()
        self.method = method
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(4, 5)

    def forward(self, x):  # (N, 6)
        y = self.a(x)  # (N, 12)
        y = y.unflatten(1, (3, 4)) if self.method else torch.unflatten(y, 1, (3, 4))
        return self.b(F.relu(y))  # (N, 3, 4) -> (N, 3, 5)


@pytest.mark.parametrize("method", [True, False])
def test_unflatten_size_is_rewritten(method):
    r = prune_and_check(Unflatten(method), torch.randn(2, 6), ratio=0.5, min_ratio=0.0)
    assert r.model.a.out_features < 12 and r.model.b.in_features < 4
