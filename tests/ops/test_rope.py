"""Rotary tables computed in forward (``torch.outer(positions, inv_freq)``, ``cat``,
``cos``/``sin``): the table's last dim is the q/k head-dim class, ``inv_freq`` is sliced
with it, positions (tokens) are never pruned.

Patterns: a GQA + RoPE attention whose tables are built in forward, between a producer
(``emb``) and a head, so pruning q/k head dims is checked numerically; and the
benchmarks' LLaMA (``build_tiny``: RMSNorm, GQA, RoPE, SwiGLU) at both settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.surgery import slim
from fxprune.verify import verify_equivalence
from tests.harness import group_members, load_llama, prune_and_check

T, D_IN, HIDDEN = 6, 8, 32
X = torch.randn(2, T, D_IN)
SETTINGS = [
    pytest.param("synflow", 0.85, 0.15, id="synflow-0.85"),
    pytest.param("l1", 0.5, 0.15, id="l1-0.5"),
]


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class RotaryGQA(nn.Module):
    """4 query heads, 2 key/value heads, head dim 8; cos/sin computed every call."""

    def __init__(self, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, HIDDEN // heads
        self.q_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.k_proj = nn.Linear(HIDDEN, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(HIDDEN, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x):
        bsz, seq, _ = x.size()
        q = self.q_proj(x).view(bsz, seq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        positions = torch.arange(seq, dtype=self.inv_freq.dtype)  # tokens: never pruned
        freqs = torch.outer(positions, self.inv_freq)  # (T, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, Dh)
        q = q * emb.cos() + rotate_half(q) * emb.sin()
        k = k * emb.cos() + rotate_half(k) * emb.sin()
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(bsz, self.kv_heads, rep, seq, self.head_dim).reshape(
            bsz, self.heads, seq, self.head_dim)
        v = v[:, :, None].expand(bsz, self.kv_heads, rep, seq, self.head_dim).reshape(
            bsz, self.heads, seq, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(D_IN, HIDDEN)
        self.attn = RotaryGQA()
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x):
        x = self.emb(x)
        return self.head(x + self.attn(x))


QK = {"attn.q_proj.out_features", "attn.k_proj.out_features", "attn.inv_freq#0"}
VO = {"attn.v_proj.out_features", "attn.o_proj.in_features"}


def test_rotary_table_joins_the_head_dim_class():
    g = fxprune.analyze(Net().eval(), X, heads="dims")
    assert not g.unhandled
    members = group_members(g)
    assert QK in members and VO in members
    qk = next(gr for gr in g.groups if set(gr.members) == QK)
    # head dim 8: the rotated halves (j, j + 4) and frequency j are one class -> 4 classes
    assert qk.size == 4 and qk.frozen_classes == 0


def test_whole_heads_keep_the_table_whole():
    g = fxprune.analyze(Net().eval(), X, heads="whole")
    table = next(gr for gr in g.groups if "attn.inv_freq#0" in gr.members)
    assert table.frozen_classes == table.size == 4
    heads = next(gr for gr in g.groups if "attn.q_proj.out_features" in gr.members)
    assert heads.size == 2 and heads.frozen_classes == 0  # one kv head with its two q heads


@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_rotary_slim_matches_oracle(heads, scorer, ratio, min_ratio):
    r = prune_and_check(Net(), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer, heads=heads)
    attn = r.model.attn  # a plain submodule of the slim GraphModule
    half = attn.inv_freq.shape[0]
    if heads == "dims":  # 4 q heads, 2 kv heads, each 2 * half dims
        assert attn.q_proj.out_features == 4 * 2 * half
        assert attn.k_proj.out_features == 2 * 2 * half
    else:  # whole heads: the table keeps every frequency
        assert half == 4 and attn.q_proj.out_features % 8 == 0


def qk_only_keep(graph, members):
    """Prune every other q/k head-dim class and nothing else."""
    keep = np.ones(graph.num_classes, dtype=bool)
    group = next(gr for gr in graph.groups if set(gr.members) >= members)
    keep[group.classes[::2]] = False
    return keep


def test_pruned_head_dims_are_exact_at_other_lengths():
    model = Net().eval()
    g = fxprune.analyze(model, X, heads="dims")
    keep = qk_only_keep(g, QK)
    small = slim(g, keep)
    assert small.attn.inv_freq.shape == (2,) and small.attn.q_proj.weight.shape == (16, HIDDEN)
    for seq in (T, 3, 11):  # the positions follow the input length
        x = torch.randn(3, seq, D_IN)
        rep = verify_equivalence(g, keep, small, (x,))
        assert rep.exact and rep.passed, rep.detail
        assert rep.max_abs_diff < 1e-5


# ------------------------------------------------------------ the benchmarks' LLaMA
@pytest.fixture(scope="module")
def llama():
    return load_llama()


def test_tiny_llama_qk_prunable(llama):
    torch.manual_seed(0)
    model = llama.build_tiny("cpu")
    ids = torch.randint(0, 1000, (1, 16))
    g = fxprune.analyze(model, (ids,), heads="dims")
    assert not g.unhandled
    for layer in range(2):
        qk = next(gr for gr in g.groups if f"layers.{layer}.self_attn.inv_freq#0" in gr.members)
        assert f"layers.{layer}.self_attn.q_proj.out_features" in qk.members
        assert qk.size == 8 and qk.frozen_classes == 0  # head dim 16, halves paired
    keep = np.ones(g.num_classes, dtype=bool)
    for gr in g.groups:
        if any("inv_freq" in m for m in gr.members):
            keep[gr.classes[::2]] = False
    small = slim(g, keep)
    rep = verify_equivalence(g, keep, small, (ids,))
    assert rep.exact and rep.passed and rep.max_abs_diff < 1e-4, rep.detail
    assert small.get_submodule("layers.0.self_attn.q_proj").weight.shape == (32, 64)


@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_tiny_llama_slim_matches_oracle(llama, heads, scorer, ratio, min_ratio):
    torch.manual_seed(0)
    model = llama.build_tiny("cpu")
    ids = torch.randint(0, 1000, (1, 16))
    # the residual stream crosses RMSNorm: checked structurally (inexact classes)
    r = prune_and_check(model, (ids,), ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        heads=heads, exact=False)
    assert r.params_after < 0.5 * r.params_before
    attn = r.model.get_submodule("layers.0.self_attn")
    if heads == "dims":  # 4 q heads of 2 * half dims
        assert attn.q_proj.out_features == 4 * 2 * attn.inv_freq.shape[0]



class ComputedFrequencies(RotaryGQA):
    """inv_freq computed in forward: from constants, torch.fx folds it into a constant
    tensor (``_tensor_constant0``), sliced like a buffer; from q's own width
    (``q.shape[-1]``), the size read freezes q/k's head dims (never a table of the dense
    width against slim q)."""

    def __init__(self, from_width: bool):
        super().__init__()
        self.from_width = from_width

    def forward(self, x):
        bsz, seq, _ = x.size()
        q = self.q_proj(x).view(bsz, seq, self.heads, self.head_dim).transpose(1, 2)
        width = q.shape[-1] if self.from_width else self.head_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, width, 2).float() / self.head_dim))
        emb = torch.outer(torch.arange(seq).float(), inv_freq)
        emb = torch.cat((emb, emb), dim=-1)
        q = q * emb.cos() + rotate_half(q) * emb.sin()
        return self.o_proj(q.transpose(1, 2).reshape(bsz, seq, -1))


@pytest.mark.parametrize("from_width", [False, True], ids=["constants", "q-width"])
def test_frequencies_computed_in_forward(from_width):
    model = Net()
    model.attn = ComputedFrequencies(from_width)
    g = fxprune.analyze(model.eval(), X, heads="dims")
    q = next(gr for gr in g.groups if "attn.q_proj.out_features" in gr.members)
    if from_width:
        assert q.frozen_classes == q.size
    else:
        assert q.frozen_classes == 0 and q.size == 4  # 8 dims, halves paired
        assert any(m.startswith("_tensor_constant") for m in q.members)
    r = prune_and_check(model, X, ratio=0.5, min_ratio=0.15, scorer="l1")
    assert (r.model.attn.q_proj.out_features < HIDDEN) != from_width
