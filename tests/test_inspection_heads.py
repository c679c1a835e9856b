"""Heads per attention block: ``inspect`` lists them, ``prune`` reports how many survive."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import fxprune
from fxprune.inspection import inspect_model
from fxprune.ops.heads import head_blocks
from tests.ops.test_attention import MHA, Block, GQARoPE, NanoGPTAttention, PackedQKV, X


def render(obj) -> str:
    console = Console(width=160, record=True)
    console.print(obj)
    return console.export_text()


@pytest.mark.parametrize("attn,block,heads,head_dim,kv", [
    (NanoGPTAttention(), "attn", 4, 8, None),
    (PackedQKV(), "attn", 4, 8, None),
    (GQARoPE(), "attn", 4, 8, 2),
    (MHA("bool"), "attn.mha", 4, 8, None),
])
def test_inspect_lists_heads_per_block(attn, block, heads, head_dim, kv):
    report = inspect_model(Block(attn).eval(), X)
    assert report.attention == [{"block": block, "heads": heads, "head_dim": head_dim,
                                 "kv_heads": kv, "dims": "prunable", "whole_heads": "prunable"}]
    assert report.to_dict()["attention"] == report.attention
    text = render(report)
    assert "attention heads per block" in text and block in text


class FrozenHeads(NanoGPTAttention):
    """Reads one head dim by index: head dims are frozen, whole heads are not."""

    def forward(self, x):
        B, T, C = x.size()
        q, _k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head)
        pick = q[..., 0]  # (B, T, H): one dim of every head
        return self.c_proj(v) + pick.sum(-1, keepdim=True)


def test_inspect_says_why_head_dims_are_frozen():
    report = inspect_model(Block(FrozenHeads()).eval(), X)
    (row,) = report.attention
    assert row["heads"] == 4 and row["head_dim"] == 8
    assert row["dims"].startswith(("frozen", "partly frozen")), row
    assert "frozen" in render(report)


def test_no_attention_no_heads_table():
    import torch
    from torch import nn

    report = inspect_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)),
                           torch.randn(1, 3, 8, 8))
    assert report.attention == []
    assert "attention heads" not in render(report)


@pytest.mark.parametrize("heads,expect", [("whole", lambda h: h["heads_after"] < 4 and h["head_dim_after"] == 8),
                                          ("dims", lambda h: h["heads_after"] == 4 and h["head_dim_after"] < 8)])
def test_prune_summary_reports_heads_kept(heads, expect):
    r = fxprune.prune(Block(NanoGPTAttention()).eval(), X, ratio=0.5, scorer="l1", heads=heads,
                      uniform=True)
    (row,) = r.summary()["attention"]
    assert row["block"] == "attn" and row["heads_before"] == 4 and row["head_dim_before"] == 8
    assert expect(row), row
    # the slim model really has that many heads x dims in its value projection
    attn = r.model.attn
    v_dim = attn.c_proj.in_features // row["heads_after"]
    assert v_dim in row["head_dims_after"]
    assert attn.c_attn.out_features == row["heads_after"] * (2 * row["head_dim_after"] + v_dim)
    assert "attention heads (1 blocks)" in render(r)
    assert json.loads(r.plan.to_json())["summary"]["attention"] == [row]


def test_cli_inspect_json_has_heads(tmp_path):
    from fxprune.cli import app

    model_file = tmp_path / "gqa.py"
    model_file.write_text(
        "import torch\n"
        "from tests.ops.test_attention import Block, GQARoPE\n"
        "def build_model():\n    return Block(GQARoPE()).eval()\n"
        "def example_inputs():\n    return (torch.randn(2, 6, 8),)\n")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["inspect", str(model_file), "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["attention"]
    assert rows[0]["heads"] == 4 and rows[0]["kv_heads"] == 2
    assert head_blocks(fxprune.analyze(Block(GQARoPE()).eval(), X))[0].kv_heads == 2


def test_cli_prune_heads_both_reports_heads_and_numeric_share(tmp_path):
    """A LLaMA block (RMSNorm'd residual: inexact) pruned with --heads both: the result
    shows heads kept, the equivalence line and summary.json the share checked numerically.
    (Ratio 0.8: each pass removes 1 - sqrt(0.2) = 55%, one of its 2 kv head groups.)"""
    from fxprune.cli import app

    model_file = tmp_path / "llama.py"
    model_file.write_text(
        "import torch\n"
        "from tests.ops.test_attention import LlamaBlock\n"
        "def build_model():\n    torch.manual_seed(0)\n    return LlamaBlock().eval()\n"
        "def example_inputs():\n    return (torch.randn(2, 6, 8),)\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["prune", str(model_file), "--heads", "both", "--ratio", "0.8",
                                   "--scorer", "l1", "--uniform", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "attention heads (1 blocks)" in res.output
    assert "equivalence: ok" in res.output and "checked numerically" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["verified_numerically"] < 1
    (row,) = summary["attention"]
    assert row["heads_after"] < row["heads_before"] == 4
    assert min(row["head_dims_after"]) < row["head_dim_before"] == 8
    assert summary["settings"]["heads"] == "both"
    # the plan replays on a fresh model to the saved slim model
    import torch

    from tests.ops.test_attention import LlamaBlock

    torch.manual_seed(0)
    fresh = LlamaBlock().eval()
    slim, inputs = fxprune.load_slim(out)
    replayed = fxprune.apply_plan(fresh, out / "plan.json", inputs)
    with torch.no_grad():
        assert torch.allclose(replayed(*inputs), slim(*inputs), atol=1e-6)
