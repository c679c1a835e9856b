"""Tracing degrades gracefully: untraceable submodules become leaves (named, with the
source line), custom autograd functions stay calls, ``list(x.chunk(2, 1))`` traces, and an
untraceable root yields its traceable parts."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import fx, nn

from fxprune.errors import TraceError
from fxprune.trace import (
    AutogradFunctionCall,
    UntraceableRoot,
    find_traceable_parts,
    leaves_of,
    trace_model,
)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        if x.mean() > 100:  # never true on the test inputs
            return x
        return self.conv(x)


class Holder(nn.Module):
    """A traceable module holding an untraceable one: only the inner one is a leaf."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(8, 8, 3, padding=1)
        self.inner = DataDependent(8)

    def forward(self, x):
        return self.inner(torch.relu(self.pre(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Holder()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class RoundSTE(torch.autograd.Function):
    """Straight-through rounding: forward rounds, backward passes the gradient as is."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(RoundSTE.apply(self.conv1(x)))


class C2f(nn.Module):
    """YOLOv8's C2f block: list(x.chunk(2, 1)) then extend with bottleneck outputs."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.m = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(2))
        self.cv2 = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def x8():
    return torch.randn(2, 3, 8, 8)


def test_untraceable_submodule_becomes_a_named_leaf():
    model = Net().eval()
    x = x8()
    gm = trace_model(model, x)
    leaves = leaves_of(gm)
    assert [(leaf.qualname, leaf.type_name, leaf.kind) for leaf in leaves] == [
        ("block.inner", "DataDependent", "automatic")
    ]
    # the reason and the user's source line that broke
    assert "control flow" in leaves[0].reason
    assert leaves[0].where.endswith("(if x.mean() > 100:  # never true on the test inputs)")
    assert "test_fallback.py:" in leaves[0].where
    # the rest is traced op by op (block.pre is a node of its own), the leaf is one call
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["stem", "block.pre", "block.inner", "head"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_without_automatic_leaves_the_error_names_the_module_and_line():
    with pytest.raises(TraceError, match=r"module 'block.inner' \(DataDependent\) at .*test_fallback.py"):
        trace_model(Net(), x8(), automatic_leaves=False)


def test_explicit_leaves_keep_working_and_are_listed():
    gm = trace_model(Net(), x8(), leaf_modules=[Holder])
    assert [(leaf.qualname, leaf.kind) for leaf in leaves_of(gm)] == [("block", "user")]
    gm = trace_model(Net(), x8(), leaf_modules=["block.inner"])
    assert [(leaf.qualname, leaf.kind) for leaf in leaves_of(gm)] == [("block.inner", "user")]


class UsesLeafOutputInControlFlow(nn.Module):
    """The parent iterates over what the untraceable child returns: both must go."""

    def __init__(self):
        super().__init__()
        self.child = DataDependent(8)
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.child(x)
        for _ in range(int(y.shape[1] > 0)):  # a shape read from a leaf output is a Proxy
            y = self.conv(y)
        return y


def test_failure_moving_up_makes_the_parent_the_leaf():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), UsesLeafOutputInControlFlow(), nn.Conv2d(8, 2, 1)).eval()
    x = x8()
    gm = trace_model(model, x)
    assert [(leaf.qualname, leaf.kind) for leaf in leaves_of(gm)] == [("1", "automatic")]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_leaves_survive_deepcopy_and_pickling():
    gm = trace_model(Net(), x8())
    assert leaves_of(copy.deepcopy(gm)) == leaves_of(gm)
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert leaves_of(loaded) == leaves_of(gm)


def test_autograd_function_stays_a_call_and_keeps_its_backward():
    model = Quantised()
    x = x8().requires_grad_()
    gm = trace_model(model, x)
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert [type(gm.get_submodule(n.target)) for n in calls] == [nn.Conv2d, AutogradFunctionCall, nn.Conv2d]
    assert not any(n.target is torch.round for n in gm.graph.nodes), "forward was inlined"
    assert [leaf.kind for leaf in leaves_of(gm)] == ["autograd"]
    # gradients through the traced model equal those of the eager model (not zero)
    gm(x).sum().backward()
    grad_traced = x.grad.clone(), gm.conv1.weight.grad.clone()
    x.grad = None
    model(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0
    torch.testing.assert_close(grad_traced[0], x.grad)
    torch.testing.assert_close(grad_traced[1], model.conv1.weight.grad)
    # the caller's model holds no wrapper module
    assert [name for name, _ in model.named_modules()] == ["", "conv1", "conv2"]
    # and the function still runs eagerly afterwards (apply is restored)
    assert torch.equal(RoundSTE.apply(torch.tensor([0.3])), torch.tensor([0.25]))


def test_list_of_chunks_traces():
    model = C2f().eval()
    x = x8()
    gm = trace_model(model, x)
    assert leaves_of(gm) == []
    assert sum(1 for n in gm.graph.nodes if n.op == "call_module") == 4
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


class Detector(nn.Module):
    """Root forward loops over a list of images (untraceable); backbone and head trace."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 2, 1)
        self.post = DataDependent(2)

    def forward(self, x):
        features = self.backbone(x)
        scores = [self.head(f[None]) for f in features]  # iterates over a tensor
        return self.post(torch.cat(scores))


def test_untraceable_root_is_named_and_its_parts_found():
    model = Detector().eval()
    with pytest.raises(UntraceableRoot, match=r"model's own forward \(Detector\)"):
        trace_model(model, x8())
    parts, skipped = find_traceable_parts(model, x8())
    # head is called once per image, always with the same shape: a part; post's own
    # forward does not trace, so its child is the part
    assert [p.qualname for p in parts] == ["backbone", "head", "post.conv"]
    assert [tuple(p.inputs[0].shape) for p in parts] == [(2, 3, 8, 8), (1, 8, 8, 8), (2, 2, 8, 8)]
    assert skipped == []


def test_part_called_at_several_sizes_lists_every_call():
    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            outs = [self.conv(x), self.conv(x[:, :, ::2, ::2])]
            return [o.sum() for o in outs] if x.sum() > -1e9 else outs

    parts, skipped = find_traceable_parts(TwoScales().eval(), x8())
    assert [p.qualname for p in parts] == ["conv"] and skipped == []
    assert [tuple(args[0].shape) for args in parts[0].calls] == [(2, 3, 8, 8), (2, 3, 4, 4)]


def test_graph_module_input_keeps_its_leaves():
    gm = trace_model(Net(), x8())
    again = trace_model(gm, x8(), copy_model=False)
    assert isinstance(again, fx.GraphModule)
    assert leaves_of(again) == leaves_of(gm)


class OptionalMask(nn.Module):
    """timm's Hiera: ``forward(x, mask=None)`` branches on the optional argument."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, mask=None, scale: float = 2.0):
        if mask is not None:
            x = x * mask.view(x.shape[0], 1, 8, 8)
        return self.conv(x) * scale


def test_optional_arguments_not_given_are_traced_as_their_defaults():
    model = OptionalMask().eval()
    x = x8()
    gm = trace_model(model, x)
    assert leaves_of(gm) == []
    assert not any(n.op == "call_method" and n.target == "view" for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
