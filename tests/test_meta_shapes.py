"""Shape propagation on the meta device (fxprune.shapes): the same node shapes as the real
forward pass, a fallback to the real pass when an op cannot run on meta, and analysis of
a model that has no weights at all (built on the meta device)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from fxprune import trace
from fxprune.errors import TraceError
from fxprune.trace import META_SHAPE, propagate_shapes, trace_model
from tests.harness import LLAMA_FILE, load_llama


class SizeArithmetic(nn.Module):
    """nanoGPT-style attention: sizes read with x.size() and used in arithmetic and views;
    two identical transposes (one result cache entry) of which one is changed in place."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        y = self.proj(y)
        a, b = y.transpose(1, 2), y.transpose(1, 2)
        a.unsqueeze_(0)  # must not reach the other (cached) transpose
        z = self.norm(b) + a.squeeze(0)
        return z.flatten(1)[:, : z.shape[-1] * 2]


def shapes(gm):
    return {n.name: n.meta.get(META_SHAPE) for n in gm.graph.nodes}


def assert_same_as_real(model, inputs):
    gm = trace_model(model, inputs)
    propagate_shapes(gm, inputs, meta=False)
    real = shapes(gm)
    for n in gm.graph.nodes:
        n.meta.pop(META_SHAPE, None)
    out = propagate_shapes(gm, inputs)
    assert shapes(gm) == real
    assert all(out_meta.is_meta for out_meta in trace.tensor_leaves(out))
    return real


@pytest.fixture
def no_real_pass(monkeypatch):
    """Fail the test if the real forward pass runs."""
    def boom(*args, **kwargs):
        raise AssertionError("the real forward pass ran")

    monkeypatch.setattr(trace._ShapeRecorder, "run", boom)


def test_resnet_shapes_on_meta_equal_the_real_pass():
    model = torchvision.models.resnet18(num_classes=10).eval()
    real = assert_same_as_real(model, (torch.randn(2, 3, 64, 64),))
    assert real["fc"] == (2, 10)
    assert real["layer4_1_relu_1"] == (2, 512, 2, 2)


def test_size_arithmetic_shapes_on_meta_equal_the_real_pass():
    real = assert_same_as_real(SizeArithmetic(), (torch.randn(2, 5, 32),))
    flat = [d for s in real.values() if s is not None
            for d in (s if not s or not isinstance(s[0], tuple) else sum(s, ()))]
    assert flat and all(type(d) is int for d in flat)
    assert real["view"] == (2, 5, 4, 8)
    assert real["add"] == (2, 32, 5)


def test_transformer_block_shapes_on_meta_equal_the_real_pass():
    block = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    model = nn.Sequential(block, nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)).eval()
    real = assert_same_as_real(model, (torch.randn(2, 7, 32),))
    assert list(real.values())[-1] == (2, 7, 32)


def test_llama_with_weights_shapes_on_meta_equal_the_real_pass():
    llama = load_llama()
    real = assert_same_as_real(llama.build_tiny("cpu"), llama.example_inputs())
    assert real["lm_head"] == (1, llama.SEQ_LEN, llama.VOCAB)


def test_meta_pass_does_not_run_the_model(no_real_pass):
    gm = trace_model(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32))
    assert gm.graph.find_nodes(op="call_module", target="fc")[0].meta[META_SHAPE] == (1, 10)


@torch.library.custom_op("fxprune_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:  # a CPU kernel and no meta kernel
    return x * 2


class NeedsRealPass(nn.Module):
    def __init__(self, data_dependent: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.data_dependent = data_dependent

    def forward(self, x):
        y = self.conv(x)
        y = y[y > 0] if self.data_dependent else torch.ops.fxprune_test.twice(y)
        return y.sum()


@pytest.mark.parametrize("data_dependent", [False, True])
def test_falls_back_to_the_real_pass_when_an_op_cannot_run_on_meta(data_dependent, caplog):
    x = torch.randn(1, 3, 8, 8)
    model = NeedsRealPass(data_dependent).eval()
    with caplog.at_level(logging.DEBUG, logger="fxprune.shapes"):
        gm = trace_model(model, x)
    failed = "getitem" if data_dependent else "twice"
    assert any(f"node '{failed}'" in r.getMessage() for r in caplog.records), caplog.text
    by_name = shapes(gm)
    assert by_name["conv"] == (1, 8, 6, 6)
    if data_dependent:  # the real number of positive values, which only a real pass knows
        assert by_name["getitem"] == (int((model.conv(x) > 0).sum()),)
    else:
        assert by_name["twice"] == (1, 8, 6, 6)


def test_meta_model_needing_data_fails_with_one_clear_line():
    with torch.device("meta"):
        model = NeedsRealPass(data_dependent=True).eval()
    with pytest.raises(TraceError, match="failed at node 'getitem'.*meta device.*with weights"):
        trace_model(model, torch.randn(1, 3, 8, 8))


def test_tiny_meta_llama_inspects(no_real_pass):
    from fxprune.inspection import inspect_model

    llama = load_llama()
    model = llama.build_tiny()
    assert all(p.is_meta for p in model.parameters())
    report = inspect_model(model, llama.example_inputs())
    assert report.params == sum(p.numel() for p in model.parameters()) == 4_186_944
    mlp = [g for g in report.groups if g["size"] == 172]  # the SwiGLU hidden width
    assert len(mlp) == 2 and all(g["prunable"] for g in mlp)
    assert all(any("mlp.down_proj" in m for m in g["members"]) for g in mlp)
    assert report.groups[0]["size"] == 64  # the residual stream
    assert report.macs > 0
    graph = fxprune.analyze(model, llama.example_inputs())
    assert graph.gm.graph.find_nodes(op="call_module", target="lm_head")[0].meta[META_SHAPE] == (
        1, llama.SEQ_LEN, llama.VOCAB)


def test_cli_inspects_a_meta_model_and_refuses_to_prune_it(tmp_path):
    from typer.testing import CliRunner

    from fxprune.cli import app

    spec = f"{LLAMA_FILE}:build_tiny"
    runner = CliRunner()
    r = runner.invoke(app, ["inspect", spec, "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "params 4,186,944" in r.output
    r = runner.invoke(app, ["prune", spec, "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "meta device (no weights)" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


@torch.fx.wrap
def clip_window(window: list, size: list) -> list:
    """Like torchvision's video swin ``_get_window_and_shift_size``: mutates its list."""
    for i in range(len(window)):
        window[i] = min(size[i], window[i])
    return window


class MutatesListArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        window = clip_window([7, 7], [y.shape[2], y.shape[3]])
        return self.head(F.avg_pool2d(y, window))


def test_a_callee_may_mutate_its_list_arguments(no_real_pass):
    # fx's Interpreter hands immutable lists; the traced model's own code passes plain ones
    gm = trace_model(MutatesListArgs(), torch.randn(1, 3, 5, 5))
    assert gm.graph.find_nodes(op="call_module", target="head")[0].meta[META_SHAPE] == (1, 4, 1, 1)


def test_a_callee_that_mutates_its_list_arguments_prunes_against_the_oracle():
    from tests.harness import prune_and_check

    result = prune_and_check(MutatesListArgs(), torch.randn(1, 3, 5, 5), 0.5, 0.15, "l1")
    assert result.model.conv.out_channels < 8
