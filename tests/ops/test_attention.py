"""One tiny module per attention pattern: exact groups, then slim == masked dense.

Every model has a producer in front of the residual stream (``emb``) and a head after
it, so the residual, the attention projections and the MLP are real, separate groups.
Each pattern is pruned in the paper's setting (Synflow, ratio 0.85, min_ratio 0.15) and
at L1 0.5; the harness asserts the slim model is new, smaller, equals the dense model
with the pruned channels masked, and runs on a batch of another size.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from tests.harness import group_members, prune_and_check

T, D_IN = 6, 8
X = torch.randn(2, T, D_IN)
SETTINGS = [
    pytest.param("synflow", 0.85, 0.15, id="synflow-0.85"),
    pytest.param("l1", 0.5, 0.15, id="l1-0.5"),
]


def prunable_sizes(graph):
    return [g.size for g in graph.groups if g.prunable]


class Block(nn.Module):
    """emb -> x + attn(x) -> x + mlp(x) -> head, with a pluggable attention."""

    def __init__(self, attn: nn.Module, width: int = 32):
        super().__init__()
        self.emb = nn.Linear(D_IN, width)
        self.attn = attn
        self.fc = nn.Linear(width, 64)
        self.proj = nn.Linear(64, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):  # (B, T, D_IN)
        x = self.emb(x)  # (B, T, C)
        x = x + self.attn(x)
        x = x + self.proj(F.gelu(self.fc(x)))
        return self.head(x)


RESIDUAL = {"emb.out_features", "fc.in_features", "proj.out_features", "head.in_features"}
MLP = {"fc.out_features", "proj.in_features"}


# ----------------------------------------------------------------- nanoGPT: C // n_head
class NanoGPTAttention(nn.Module):
    def __init__(self, n_embd=32, n_head=4, fused=True):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd, self.fused = n_head, n_embd, fused

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(8))
            att = F.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


@pytest.mark.parametrize("heads,attn_classes", [("dims", 16), ("whole", 4)])
def test_nanogpt_groups(heads, attn_classes):
    g = fxprune.analyze(Block(NanoGPTAttention()).eval(), X, heads=heads)
    assert group_members(g) == [
        RESIDUAL | {"attn.c_attn.in_features", "attn.c_proj.out_features"},
        {"attn.c_attn.out_features", "attn.c_proj.in_features"},
        MLP,
    ]
    # dims: 8 q/k dims shared by every head + 8 v dims; whole: 4 heads (q, k and v together)
    assert prunable_sizes(g) == [32, attn_classes, 64]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_nanogpt_slim_matches_oracle(fused, heads, scorer, ratio, min_ratio):
    r = prune_and_check(Block(NanoGPTAttention(fused=fused)), X, ratio=ratio,
                        min_ratio=min_ratio, scorer=scorer, heads=heads)
    attn = r.model.attn
    v_width = attn.c_proj.in_features  # every head keeps the same dims (or whole heads go)
    assert v_width % 4 == 0 if heads == "dims" else v_width % 8 == 0
    assert (attn.c_attn.out_features - v_width) % 2 == 0  # q and k keep the same dims
    assert attn.c_attn.out_features < 96


# ----------------------------------------------------- BERT: x.size()[:-1] + (H, Dh)
class BertSelfAttention(nn.Module):
    def __init__(self, hidden=32, heads=4):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, hidden // heads
        self.all_head_size = hidden
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.output = nn.Linear(hidden, hidden)
        # an additive float mask (padding of the last token): a buffer, never a producer
        mask = torch.zeros(1, 1, 1, T)
        mask[..., -1] = -10000.0
        self.register_buffer("attention_mask", mask)

    def transpose_for_scores(self, x):
        # head size computed from x's width: with whole heads cut it must stay the dense 8
        head_size = x.size(-1) // self.num_attention_heads
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states):
        q = self.transpose_for_scores(self.query(hidden_states))
        k = self.transpose_for_scores(self.key(hidden_states))
        v = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = F.softmax(scores + self.attention_mask, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        new_context_shape = context.size()[:-2] + (self.all_head_size,)
        return self.output(context.view(new_context_shape))


def test_bert_computed_shape_groups():
    g = fxprune.analyze(Block(BertSelfAttention()).eval(), X)
    assert group_members(g) == [
        RESIDUAL | {"attn.query.in_features", "attn.key.in_features", "attn.value.in_features",
                    "attn.output.out_features"},
        {"attn.query.out_features", "attn.key.out_features"},
        {"attn.value.out_features", "attn.output.in_features"},
        MLP,
    ]
    assert prunable_sizes(g) == [32, 8, 8, 64]
    assert not any("attention_mask" in s.key for s in g.spaces.values() if s.producer)


@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_bert_slim_matches_oracle(heads, scorer, ratio, min_ratio):
    r = prune_and_check(Block(BertSelfAttention()), X, ratio=ratio, min_ratio=min_ratio,
                        scorer=scorer, heads=heads)
    attn = r.model.attn
    assert attn.query.out_features == attn.key.out_features < 32


# ------------------------------------------------------------ timm: packed qkv + unbind
class PackedQKV(nn.Module):
    def __init__(self, dim=32, num_heads=4, fused=True):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, dim // num_heads, fused
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


@pytest.mark.parametrize("heads,attn_classes", [("dims", 8), ("whole", 4)])
def test_packed_qkv_unbind_groups(heads, attn_classes):
    g = fxprune.analyze(Block(PackedQKV()).eval(), X, heads=heads)
    assert group_members(g) == [
        RESIDUAL | {"attn.qkv.in_features", "attn.proj.out_features"},
        {"attn.qkv.out_features", "attn.proj.in_features"},
        MLP,
    ]
    assert prunable_sizes(g) == [32, attn_classes, 64]
    assert not g.unhandled


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_packed_qkv_slim_matches_oracle(fused, scorer, ratio, min_ratio):
    prune_and_check(Block(PackedQKV(fused=fused)), X, ratio=ratio, min_ratio=min_ratio,
                    scorer=scorer)


# ------------------------------------------------------------ LLaMA: GQA + RoPE
def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    b, kvh, t, d = x.shape
    x = x[:, :, None, :, :].expand(b, kvh, n_rep, t, d)
    return x.reshape(b, kvh * n_rep, t, d)


class GQARoPE(nn.Module):
    def __init__(self, hidden=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim): a channel dim, sliced with it
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())

    def forward(self, x):
        bsz, q_len, _ = x.size()
        q = self.q_proj(x).view(bsz, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        k = repeat_kv(k, self.heads // self.kv_heads)
        v = repeat_kv(v, self.heads // self.kv_heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = out.transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out)


def test_gqa_rope_groups_dims():
    g = fxprune.analyze(Block(GQARoPE()).eval(), X, heads="dims")
    assert group_members(g) == [
        RESIDUAL | {"attn.q_proj.in_features", "attn.k_proj.in_features",
                    "attn.v_proj.in_features", "attn.o_proj.out_features"},
        {"attn.q_proj.out_features", "attn.k_proj.out_features", "attn.cos#1", "attn.sin#1"},
        {"attn.v_proj.out_features", "attn.o_proj.in_features"},
        MLP,
    ]
    # q/k: 8 head dims, rotated halves paired -> 4; v: 8 head dims
    assert prunable_sizes(g) == [32, 4, 8, 64]


def test_gqa_rope_groups_whole_heads():
    g = fxprune.analyze(Block(GQARoPE()).eval(), X, heads="whole")
    # a kv head and the two q heads that share it go together
    assert prunable_sizes(g) == [32, 2, 64]


@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_gqa_rope_slim_matches_oracle(heads, scorer, ratio, min_ratio):
    r = prune_and_check(Block(GQARoPE()), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        heads=heads)
    attn = r.model.attn
    assert attn.cos.shape[1] == attn.sin.shape[1] <= 8


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(Block):
    def __init__(self):
        super().__init__(GQARoPE())
        self.norm1, self.norm2 = RMSNorm(32), RMSNorm(32)

    def forward(self, x):
        x = self.emb(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.proj(F.silu(self.fc(self.norm2(x))))
        return self.head(x)


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_llama_block_prunes_residual_across_rmsnorm(scorer, ratio, min_ratio):
    g = fxprune.analyze(LlamaBlock().eval(), X)
    residual = next(gr for gr in g.groups if "emb.out_features" in gr.members)
    assert residual.prunable and residual.inexact_reason is not None
    assert {"norm1.weight#0", "norm2.weight#0"} <= set(residual.members)
    prune_and_check(LlamaBlock(), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                    exact=False)


# ------------------------------------------------------------ nn.MultiheadAttention
def causal_mask(kind: str) -> torch.Tensor:
    if kind == "float":  # the additive mask of the PyTorch docs
        return nn.Transformer.generate_square_subsequent_mask(T)
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)


class MHA(nn.Module):
    def __init__(self, kind, width=32, heads=4):
        super().__init__()
        self.mha = nn.MultiheadAttention(width, heads, batch_first=True)
        self.register_buffer("mask", causal_mask(kind))

    def forward(self, x):
        return self.mha(x, x, x, attn_mask=self.mask, need_weights=False)[0]


@pytest.mark.parametrize("kind", ["float", "bool"])
def test_mha_groups(kind):
    g = fxprune.analyze(Block(MHA(kind)).eval(), X)
    # the stock module needs in_proj's width == its input width: the residual and the
    # attention's inner channels are cut together; with heads="dims", one class per
    # head dim (8 classes of 4 channels)
    assert group_members(g) == [
        RESIDUAL | {"attn.mha.embed_dim", "attn.mha.out_proj.out_features"},
        MLP,
    ]
    assert prunable_sizes(g) == [8, 64]
    assert not any(s.owner == "attn.mask" and s.producer for s in g.spaces.values())


@pytest.mark.parametrize("kind", ["float", "bool"])
@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_mha_slim_matches_oracle(kind, heads, scorer, ratio, min_ratio):
    r = prune_and_check(Block(MHA(kind)), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        heads=heads)
    mha = r.model.attn.mha
    assert mha.in_proj_weight.shape == (3 * mha.embed_dim, mha.embed_dim)
    assert mha.head_dim * mha.num_heads == mha.embed_dim == r.model.emb.out_features


@pytest.mark.parametrize("heads", ["dims", "whole"])
def test_mha_uniform_cuts_heads_or_head_dims(heads):
    r = prune_and_check(Block(MHA("float")), X, ratio=0.5, scorer="l1", heads=heads,
                        uniform=True)
    mha = r.model.attn.mha
    assert mha.embed_dim == 16
    assert (mha.num_heads, mha.head_dim) == ((2, 8) if heads == "whole" else (4, 4))


# ------------------------------------------------------------ einsum
class EinsumAttention(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q = self.q(x).view(B, N, self.heads, -1)
        k = self.k(x).view(B, N, self.heads, -1)
        v = self.v(x).view(B, N, self.heads, -1)
        attn = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        y = torch.einsum("bhqk,bkhd->bqhd", attn, v)
        return self.out(y.reshape(B, N, -1))


def test_einsum_groups():
    g = fxprune.analyze(Block(EinsumAttention()).eval(), X)
    assert group_members(g) == [
        RESIDUAL | {"attn.q.in_features", "attn.k.in_features", "attn.v.in_features",
                    "attn.out.out_features"},
        {"attn.q.out_features", "attn.k.out_features"},
        {"attn.v.out_features", "attn.out.in_features"},
        MLP,
    ]
    assert not g.unhandled


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_einsum_slim_matches_oracle(scorer, ratio, min_ratio):
    prune_and_check(Block(EinsumAttention()), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer)


# ------------------------------------------------------------ GPT-2 Conv1D: addmm
class Conv1D(nn.Module):
    """HF GPT-2's linear layer: weight stored (in, out), applied with ``torch.addmm``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2MLP(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(64, width), Conv1D(width, 64)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


def test_addmm_groups():
    g = fxprune.analyze(Block(GPT2MLP()).eval(), X)
    assert group_members(g) == [
        RESIDUAL | {"attn.c_fc.weight#0", "attn.c_proj.weight#1", "attn.c_proj.bias#0"},
        {"attn.c_fc.weight#1", "attn.c_fc.bias#0", "attn.c_proj.weight#0"},
        MLP,
    ]
    assert prunable_sizes(g) == [32, 64, 64]


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_addmm_slim_matches_oracle(scorer, ratio, min_ratio):
    r = prune_and_check(Block(GPT2MLP()), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer)
    assert r.model.attn.c_fc.weight.shape[1] == r.model.attn.c_proj.weight.shape[0] < 64


class Baddbmm(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.a, self.b = nn.Linear(width, 16), nn.Linear(width, 16)
        self.out = nn.Linear(T, width)
        self.register_buffer("base", torch.randn(1, T, T))

    def forward(self, x):  # scores (B, T, T) = base + 0.5 * a(x) @ b(x)^T: a/b dims contracted
        s = torch.baddbmm(self.base, self.a(x), self.b(x).transpose(1, 2), alpha=0.5)
        return self.out(torch.bmm(s.softmax(-1), s))


def test_baddbmm_bmm_contraction():
    g = fxprune.analyze(Block(Baddbmm()).eval(), X)
    assert {"attn.a.out_features", "attn.b.out_features"} in group_members(g)
    prune_and_check(Block(Baddbmm()), X, ratio=0.5, scorer="l1")


# ------------------------------------------------------------ shapes and norms
class FunctionalLayerNorm(nn.Module):
    """torchvision's LayerNorm2d traced into F.layer_norm with a literal normalized_shape."""

    def __init__(self, width=32):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.bias = nn.Parameter(torch.randn(width) * 0.1)

    def forward(self, x):
        return F.layer_norm(x, (32,), self.weight, self.bias, 1e-6)


class LNBlock(Block):
    def __init__(self):
        super().__init__(nn.Identity())
        self.norm = FunctionalLayerNorm()

    def forward(self, x):
        x = self.emb(x)
        x = x + self.proj(F.gelu(self.fc(self.norm(x))))
        return self.head(x)


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_functional_layer_norm_shape_is_rewritten(scorer, ratio, min_ratio):
    r = prune_and_check(LNBlock(), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        exact=False)
    assert r.model.norm.weight.shape[0] < 32


class ForeignSize(nn.Module):
    """A size read from a channel dim and used as a number must freeze that dim."""

    def __init__(self, width=32):
        super().__init__()
        self.a = nn.Linear(width, 12)
        self.c = nn.Linear(12, width)

    def forward(self, x):
        y = self.a(x)  # (B, T, 12)
        n = torch.arange(y.shape[-1]).float().sum()  # 66 for 12 channels: depends on the count
        return self.c(y) * n


def test_size_of_channel_on_plain_dim_freezes():
    g = fxprune.analyze(Block(ForeignSize()).eval(), X)
    a = next(gr for gr in g.groups if "attn.a.out_features" in gr.members)
    assert not a.prunable


# ------------------------------------------------------------ MACs
def test_macs_counted_for_attention_ops():
    B, H, N, Dh = 1, 4, T, 8
    q = torch.randn(B, H, N, Dh)

    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x, q):
            a = self.mha(x, x, x, need_weights=False)[0]
            s = F.scaled_dot_product_attention(q, q, q)
            e = torch.einsum("bhqd,bhkd->bhqk", q, q)
            m = torch.addmm(torch.zeros(32), x[0], torch.ones(32, 32))
            return a, s, e, m

    x = torch.randn(1, N, 32)
    macs = fxprune.count_macs(Ops(), (x, q))
    mha = 4 * N * 32 * 32 + 2 * H * N * N * Dh  # in/out projections + QK^T and AV
    sdpa = 2 * H * N * N * Dh
    einsum = H * N * N * Dh
    addmm = N * 32 * 32
    assert macs == mha + sdpa + einsum + addmm


# ------------------------------------------------------------ heads="both"
BOTH_MODELS = {
    "mha": lambda: Block(MHA("float")),
    "sdpa-packed": lambda: Block(PackedQKV(fused=True)),
    "nanogpt": lambda: Block(NanoGPTAttention(fused=False)),
    "nanogpt-sdpa": lambda: Block(NanoGPTAttention(fused=True)),
    # 4 kv heads, each shared by 2 q heads: uniform 1 - sqrt(0.5) of 4 kv groups is one
    "gqa-rope": lambda: Block(GQARoPE(heads=8, kv_heads=4)),
}
# global L1 on random weights may keep every head (a head's class score sums 3 x Dh
# channels); uniform cuts every group, so both kinds must shrink there
BOTH_SETTINGS = [
    pytest.param("synflow", 0.85, 0.15, False, id="synflow-0.85"),
    pytest.param("l1", 0.5, 0.15, False, id="l1-0.5"),
    pytest.param("l1", 0.5, 0.15, True, id="l1-0.5-uniform"),
]


def test_both_graph_refines_whole_heads_and_head_dims():
    from fxprune.composed import ComposedGraph

    g = fxprune.analyze(Block(NanoGPTAttention()).eval(), X, heads="both")
    assert isinstance(g, ComposedGraph)
    # q/k and v channels of the 4 heads x 8 dims: one class per (head, dim) pair
    attn = next(gr for gr in g.groups if "attn.c_attn.out_features" in gr.members)
    assert attn.size == 4 * 8 * 2
    assert [gr.size for gr in g.groups if gr.prunable] == [32, 64, 64]


@pytest.mark.parametrize("name", list(BOTH_MODELS))
@pytest.mark.parametrize("scorer,ratio,min_ratio,uniform", BOTH_SETTINGS)
def test_both_prunes_heads_and_head_dims(name, scorer, ratio, min_ratio, uniform):
    torch.manual_seed(0)
    model = BOTH_MODELS[name]().eval()
    r = prune_and_check(model, X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        heads="both", uniform=uniform)
    (row,) = r.summary()["attention"]
    heads, head_dim = (8, 4) if name == "gqa-rope" else (4, 8)
    assert row["heads_before"] == heads and row["head_dim_before"] == head_dim
    if scorer == "synflow" or uniform:
        # q/k and v dims share one group: what shrinks may be either
        assert row["heads_after"] < heads and min(row["head_dims_after"]) < head_dim, row
    # the plan is relative to the dense model and replays to the same slim model
    replayed = fxprune.apply_plan(model, r.plan.to_dict(), X)
    with torch.no_grad():
        assert torch.allclose(replayed(X), r.model(X), atol=1e-6)
    assert r.plan.settings["heads"] == "both"


def test_both_mha_module_attributes():
    torch.manual_seed(0)
    r = prune_and_check(Block(MHA("bool")), X, ratio=0.5, scorer="l1", heads="both",
                        uniform=True)
    mha = r.model.attn.mha
    # uniform 1 - sqrt(0.5): one of 4 heads goes, then 2 of the remaining 3 x 8 dims
    assert mha.num_heads == 3 and mha.head_dim < 8
    assert mha.embed_dim == mha.num_heads * mha.head_dim == r.model.emb.out_features


def test_both_budget_multiplies_to_the_ratio():
    from fxprune.composed import split_budget

    ratio, min_ratio = split_budget(0.75, 0.25)
    assert (1 - ratio) ** 2 == pytest.approx(0.25) and min_ratio ** 2 == pytest.approx(0.25)
    torch.manual_seed(0)
    r = fxprune.prune(Block(NanoGPTAttention()).eval(), X, ratio=0.75, scorer="l1",
                      heads="both", uniform=True)
    mlp = next(g for g in r.graph.groups if "fc.out_features" in g.members)
    # 64 MLP channels: 64 -> 32 -> 16 kept, (1 - 0.5) ** 2 = 0.25 overall
    assert int(r.keep[mlp.classes].sum()) == 16


def test_both_flops_target_and_bad_target():
    torch.manual_seed(0)
    model = Block(NanoGPTAttention()).eval()
    r = fxprune.prune(model, X, target="flops=0.4", scorer="l1", heads="both")
    assert r.macs_after <= 0.4 * r.macs_before * 1.05
    with pytest.raises(fxprune.ConfigError, match="both"):
        class Budget:
            def select(self, *a):
                raise AssertionError

            def describe(self):
                return "budget"

        fxprune.prune(model, X, target=Budget(), heads="both")


def test_one_analysis_refuses_both():
    from fxprune.ops import build_channel_graph
    from fxprune.trace import trace_model

    gm = trace_model(Block(NanoGPTAttention()).eval(), X)
    with pytest.raises(fxprune.ConfigError, match="two composed passes"):
        build_channel_graph(gm, {"heads": "both"})


def test_both_graph_from_analyze_is_reused_by_prune():
    torch.manual_seed(0)
    model = Block(NanoGPTAttention()).eval()
    graph = fxprune.analyze(model, X, heads="both")
    r = fxprune.prune(model, X, ratio=0.5, scorer="l1", uniform=True, graph=graph)
    assert r.graph is graph and r.plan.settings["heads"] == "both"
    assert fxprune.verify_equivalence(r.graph, r.keep, r.model, (X,)).passed
