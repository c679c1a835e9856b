"""Pruning models that do not trace whole: leaves inside a traced model keep their
boundary channels, custom autograd functions keep their gradients, an untraceable root is
pruned part by part (one plan, replayed by apply_plan), including a torchvision detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.trace import leaves_of
from fxprune.verify import verify_equivalence
from tests.harness import prune_and_check


class DataDependent(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        if x.mean() > 100:  # never true on the test inputs
            return x
        return self.conv(x)


class WithUntraceableBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 12, 3, padding=1)
        self.block = DataDependent(12)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1)
        self.conv4 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        y = self.block(y)
        return self.conv4(torch.relu(self.conv3(y)))


@pytest.mark.parametrize("scorer,ratio,min_ratio", [("synflow", 0.85, 0.15), ("l1", 0.5, 0.15)])
def test_untraceable_submodule_is_a_leaf_with_kept_boundary(scorer, ratio, min_ratio):
    result = prune_and_check(WithUntraceableBlock(), torch.randn(2, 3, 8, 8), ratio, min_ratio, scorer)
    slim = result.model
    # the leaf's input (conv2 out) and output (conv3 in) channels are kept, the rest pruned
    assert slim.conv2.out_channels == 12 and slim.conv3.in_channels == 12
    assert slim.block.conv.weight.shape == (12, 12, 1, 1)
    assert slim.conv1.out_channels + slim.conv3.out_channels < 32  # global ranking: either side
    leaves = leaves_of(result.graph.gm)
    assert [(leaf.qualname, leaf.kind) for leaf in leaves] == [("block", "automatic")]
    assert "test_partial.py" in leaves[0].where
    frozen = {g.frozen_reason for g in result.graph.groups if not g.prunable}
    assert any("block (DataDependent)" in (reason or "") for reason in frozen)


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad


class QuantisedNet(nn.Module):
    """conv1 -> relu -> conv2 -> straight-through quantiser -> conv3."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.conv3(RoundSTE.apply(y))


def test_autograd_quantiser_gradients_equal_the_masked_dense_model():
    torch.manual_seed(1)
    model = QuantisedNet().eval()
    x = torch.randn(2, 3, 8, 8)
    result = prune_and_check(model, x, 0.5, 0.15, "l1")
    kept = np.array(result.plan.modules["conv1"]["out_channels"])
    assert len(kept) < 16
    # masked dense reference: conv1's pruned channels are zeroed, gradients flow through
    # RoundSTE.backward exactly as in the slim model
    mask = torch.zeros(16)
    mask[kept] = 1
    hook = model.conv1.register_forward_hook(lambda m, i, out: out * mask.view(1, -1, 1, 1))
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(xd).square().sum().backward()
    hook.remove()
    result.model(xs).square().sum().backward()
    assert float(xs.grad.abs().sum()) > 0.1  # not the zero gradient of an inlined round()
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.model.conv1.weight.grad, model.conv1.weight.grad[kept],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.model.conv2.weight.grad, model.conv2.weight.grad[:, kept],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.model.conv3.weight.grad, model.conv3.weight.grad)


class Detector(nn.Module):
    """Root forward loops over a tensor (untraceable); backbone and neck trace."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 8, 1))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        features = self.neck(self.backbone(x))
        return [self.head(f[None]).flatten() for f in features]  # per image


def test_untraceable_root_is_pruned_part_by_part_and_replayed():
    model = Detector().eval()
    x = torch.randn(2, 3, 8, 8)
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert isinstance(result.model, Detector)  # the user's class, parts swapped
    assert [p.qualname for p in result.parts] == ["backbone", "neck"]
    assert isinstance(result.model.backbone, torch.fx.GraphModule)
    assert result.model.head is not model.head and result.model.head.weight.shape == (2, 8, 1, 1)
    assert result.params_after < result.params_before
    neck = result.model.neck.get_submodule("0")
    assert neck.in_channels == 16  # part outputs and inputs are kept
    assert neck.out_channels < 24
    reports = result.verify()
    assert len(reports) == 3 and all(r.passed and r.exact for r in reports), [r.detail for r in reports]
    # the caller's model is untouched
    assert model.neck[0].out_channels == 24
    # one plan keyed by the original names; apply_plan replays it on a fresh instance
    assert set(result.plan.modules) >= {"backbone.0", "neck.0"}
    again = fxprune.apply_plan(Detector().eval(), result.plan.to_dict(), x)
    assert isinstance(again, Detector)
    assert {n: p.shape for n, p in again.named_parameters()} == {
        n: p.shape for n, p in result.model.named_parameters()}
    with torch.no_grad():
        outs = result.model(x)
    assert [tuple(o.shape) for o in outs] == [(128,), (128,)]


def test_small_torchvision_detector_at_small_input():
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None,
        min_size=128, max_size=128).eval()
    x = torch.rand(1, 3, 128, 128)
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert type(result.model).__name__ == "FasterRCNN"
    assert [p.qualname for p in result.parts] == ["backbone", "roi_heads.box_head"]
    # one ranking over both parts (per part it was 1.5-2.5x): the box head's fc6 has the
    # smallest mean |w| (fan-in 256*7*7), so it drops to its min_ratio floor of 1024
    assert 3.0 < result.param_reduction < 4.5
    assert result.model.roi_heads.box_head.fc6.out_features == math.ceil(0.15 * 1024)
    # totals: parameters counted on the models, MACs equal to conv/linear forward hooks
    assert (result.params_before, result.params_after) == (count_parameters(model), count_parameters(result.model))
    assert (result.macs_before, result.macs_after) == (hook_macs(model, x), hook_macs(result.model, x))
    assert result.macs_after < result.macs_before / 3
    reports = result.verify()
    assert all(r.passed for r in reports), [r.detail for r in reports]
    assert sum(r.exact for r in reports[:-1]) == 2
    with torch.no_grad():
        detections = result.model(x)
    assert set(detections[0]) == {"boxes", "labels", "scores"}
    skipped = dict(result.skipped)  # the RPN head runs on 3 levels: traced, nothing prunable
    assert skipped["rpn.head.cls_logits"].startswith("traced, but every channel is frozen")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv and linear MACs of one forward pass, per example, counted by forward hooks:
    a reference independent of fxprune's op rules."""
    total = 0

    def count(module, _inputs, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out.numel() * module.in_channels // module.groups * kh * kw
        else:
            total += out.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total // x.shape[0]


class TwoParts(nn.Module):
    """An untraceable root over two traceable parts, each with one prunable group."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.neck = nn.Sequential(nn.Conv2d(8, 24, 1), nn.ReLU(), nn.Conv2d(24, 4, 1))

    def forward(self, x):
        y = self.neck(self.backbone(x))
        return [y[i].sum() for i in range(y.shape[0])]  # loops over the batch: untraceable


def two_parts_with_known_scores() -> TwoParts:
    """L1 scores (mean |w| per output channel) set by hand: backbone.0 channel c scores
    c + 1 (1..16), neck.0 channel c scores c + 0.5 (0.5..23.5)."""
    model = TwoParts().eval()
    with torch.no_grad():
        for conv, offset in ((model.backbone[0], 1.0), (model.neck[0], 0.5)):
            scores = torch.arange(conv.out_channels, dtype=torch.float32) + offset
            conv.weight.copy_(scores.view(-1, 1, 1, 1).expand_as(conv.weight))
            conv.weight[:, 0] *= -1  # signs do not matter to L1
    return model


def test_parts_are_ranked_together_with_one_global_threshold():
    model = two_parts_with_known_scores()
    x = torch.randn(2, 3, 8, 8)
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    # 40 prunable classes (16 + 24; the parts' outputs are kept), ratio 0.5: the 20 lowest of
    # the union go, 1..10 of the backbone and 0.5..9.5 of the neck (per part: 8 and 12)
    assert [p.qualname for p in result.parts] == ["backbone", "neck"]
    assert result.plan.modules["backbone.0"]["out_channels"] == list(range(10, 16))
    assert result.plan.modules["neck.0"]["out_channels"] == list(range(10, 24))
    assert (result.model.backbone.get_submodule("0").out_channels,
            result.model.neck.get_submodule("0").out_channels) == (6, 14)
    assert all(r.passed and r.exact for r in result.verify())
    # the floor: at ratio 0.9 the neck would lose all 24; it keeps ceil(0.15 * 24) = 4
    deep = fxprune.prune(model, x, 0.9, 0.15, "l1")
    assert deep.plan.modules["neck.0"]["out_channels"] == [20, 21, 22, 23]
    assert deep.plan.modules["backbone.0"]["out_channels"] == [13, 14, 15]
    assert (deep.params_before, deep.params_after) == (count_parameters(model), count_parameters(deep.model))


def test_a_part_that_loses_nothing_in_the_ranking_stays_dense():
    model = two_parts_with_known_scores()
    with torch.no_grad():
        model.backbone[0].weight.mul_(100)  # every backbone channel outranks the neck's
    result = fxprune.prune(model, torch.randn(2, 3, 8, 8), 0.5, 0.15, "l1")
    assert [p.qualname for p in result.parts] == ["neck"]
    assert result.model.backbone[0].out_channels == 16 and not isinstance(result.model.backbone, torch.fx.GraphModule)
    assert dict(result.skipped)["backbone"] == "no channel of it ranked low enough: kept dense"
    assert result.model.neck.get_submodule("0").out_channels == 4  # 20 of 24 cut, its floor is 4


def test_a_ratio_that_cuts_nothing_in_any_part_warns_why():
    model = two_parts_with_known_scores()
    with pytest.warns(UserWarning, match="16 prunable channels, but the ratio, min_ratio"):
        result = fxprune.prune(model, torch.randn(2, 3, 8, 8), 0.01, 0.15, "l1")  # floor(0.4) = 0 cut
    assert [p.qualname for p in result.parts] == ["backbone", "neck"]
    assert result.params_after == result.params_before


def test_flops_target_budgets_the_parts_together():
    model = two_parts_with_known_scores()
    x = torch.randn(2, 3, 8, 8)
    result = fxprune.prune(model, x, target="flops=0.5", scorer="l1")
    dense = sum(p.result.macs_before for p in result.parts)
    slim = sum(p.result.macs_after for p in result.parts)
    assert 0.4 * dense < slim <= 0.5 * dense
    assert (result.macs_before, result.macs_after) == (hook_macs(model, x), hook_macs(result.model, x))


class Level(nn.Module):
    """A container whose own forward branches on a size (untraceable); its blocks trace."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))

    def forward(self, x):
        if x.shape[-1] > 1000:
            return x
        return x + self.blocks(x)


class LeafHoldsEverything(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.level = Level()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.level(self.stem(x)))


def test_traced_model_whose_leaves_hold_every_prunable_layer_is_pruned_inside_them():
    """timm's NesT and Gemma4 ViT: the model traces, but a container on the way (the
    automatic leaf) holds every prunable layer; pruning descends into it part by part."""
    model = LeafHoldsEverything().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(model, x)
    assert not graph.prunable_groups() and [leaf.qualname for leaf in leaves_of(graph.gm)] == ["level"]
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert [p.qualname for p in result.parts] == ["level.blocks"]
    assert isinstance(result.model, LeafHoldsEverything) and isinstance(result.model.level, Level)
    assert result.model.level.blocks.get_submodule("0").out_channels == 8  # half of 16
    assert dict(result.skipped)["stem"].startswith("traced, but every channel is frozen")
    assert all(r.passed and r.exact for r in result.verify())
    assert (result.params_before, result.params_after) == (count_parameters(model), count_parameters(result.model))
    assert (result.macs_before, result.macs_after) == (hook_macs(model, x), hook_macs(result.model, x))
    again = fxprune.apply_plan(LeafHoldsEverything().eval(), result.plan.to_dict(), x)
    assert again.level.blocks.get_submodule("0").out_channels == 8


def test_untraceable_root_without_prunable_parts_raises_the_trace_error():
    class ControlFlow(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > -1e9:
                return self.conv(x)
            return x

    with pytest.raises(fxprune.TraceError, match="model's own forward"):
        fxprune.prune(ControlFlow(), torch.randn(1, 3, 8, 8))


def test_nothing_prunable_warns_and_names_the_blockers():
    class OnlyLeaf(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.conv2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv2(RoundSTE.apply(self.conv1(x)))

    with pytest.warns(UserWarning, match=r"nothing to prune in OnlyLeaf: every channel is frozen") as caught:
        result = fxprune.prune(OnlyLeaf(), torch.randn(1, 3, 8, 8), 0.5)
    message = str(caught[0].message)
    assert "autograd_RoundSTE_0 (RoundSTE): custom torch.autograd.Function" in message
    assert result.params_after == result.params_before
    assert verify_equivalence(result.graph, result.keep, result.model, (torch.randn(1, 3, 8, 8),)).passed


def test_leaf_macs_are_counted_and_flagged_as_estimated():
    model = WithUntraceableBlock().eval()
    report = fxprune.cost.macs_report(model, torch.randn(2, 3, 8, 8))
    pixels = 8 * 8
    convs = pixels * (3 * 16 * 9 + 16 * 12 * 9 + 12 * 16 * 9 + 16 * 4)
    leaf = pixels * 12 * 12  # block.conv, inside the leaf: counted by running it
    assert (report.macs, report.estimated_macs, report.estimated) == (convs + leaf, leaf, ["block"])
    result = fxprune.prune(model, torch.randn(2, 3, 8, 8), 0.5, 0.15, "l1")
    assert result.macs_after >= leaf  # the kept leaf does not vanish from the slim count
