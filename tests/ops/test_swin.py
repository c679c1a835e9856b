"""torchvision's fx-wrapped Swin functions: ``shifted_window_attention`` (V1 and V2's
cosine attention with ``logit_scale``), ``_get_relative_position_bias`` (and V2's
``cpb_mlp`` table) and ``_patch_merging_pad``.

``WindowBlock`` calls the attention between a producer (``emb``) and a head with no
LayerNorm, so pruning head dims or whole heads is checked numerically against the
masked-dense oracle (q's temperature, the bias table's head column, ``logit_scale``);
the tiny torchvision ``SwinTransformer`` (V1 and V2, padded and shifted windows, patch
merging) is pruned in both settings, its residual stream crossing LayerNorm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.cost import macs_report
from fxprune.surgery import slim
from fxprune.verify import verify_equivalence
from tests.harness import prune_and_check

swin = pytest.importorskip("torchvision.models.swin_transformer")

SETTINGS = [
    pytest.param("synflow", 0.85, 0.15, id="synflow-0.85"),
    pytest.param("l1", 0.5, 0.1, id="l1-0.5"),
]
WIDTH, HEADS, WINDOW = 16, 4, [4, 4]


class WindowBlock(nn.Module):
    """emb -> (shifted) window attention -> head; the attention is torchvision's
    module, so the graph holds the wrapped functions with its weights as arguments."""

    def __init__(self, v2: bool = False, shift: int = 2):
        super().__init__()
        cls = swin.ShiftedWindowAttentionV2 if v2 else swin.ShiftedWindowAttention
        self.emb = nn.Linear(3, WIDTH)
        self.attn = cls(WIDTH, WINDOW, [shift, shift], HEADS)
        self.head = nn.Linear(WIDTH, 5)
        with torch.no_grad():  # a table that matters
            if v2:
                self.attn.logit_scale.uniform_(0.5, 2.5)
            else:
                self.attn.relative_position_bias_table.normal_(0, 1.0)

    def forward(self, x):  # (B, H, W, 3)
        return self.head(self.attn(self.emb(x)))


X = torch.randn(2, 10, 10, 3)  # 10 x 10: padded to 12, shifted windows


def attention_group(graph):
    return next(g for g in graph.groups if "attn.qkv.weight#0" in g.members)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_one_channel_space_cut_per_head_dim_or_head(v2):
    dims = fxprune.analyze(WindowBlock(v2).eval(), X, heads="dims")
    assert not dims.unhandled
    group = attention_group(dims)
    assert {"emb.out_features", "attn.qkv.weight#1", "attn.proj.weight#0",
            "attn.proj.weight#1", "attn.qkv.bias#0", "head.in_features"} <= set(group.members)
    assert group.size == WIDTH // HEADS and group.frozen_classes == 0  # one class per head dim
    whole = fxprune.analyze(WindowBlock(v2).eval(), X, heads="whole")
    group = attention_group(whole)
    assert group.size == HEADS and group.frozen_classes == 0  # one class per head
    table = "attn.cpb_mlp.2.out_features" if v2 else "attn.relative_position_bias_table#1"
    assert table in group.members
    if v2:
        assert "attn.logit_scale#0" in group.members


def drop_classes(graph, classes):
    keep = np.ones(graph.num_classes, dtype=bool)
    keep[classes] = False
    return keep


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("heads", ["dims", "whole"])
def test_pruned_heads_are_exact(v2, heads):
    model = WindowBlock(v2).eval()
    graph = fxprune.analyze(model, X, heads=heads)
    group = attention_group(graph)
    keep = drop_classes(graph, group.classes[[0, 2]])  # two head dims, or two whole heads
    small = slim(graph, keep)
    rep = verify_equivalence(graph, keep, small, (X,))
    assert rep.exact and rep.passed and rep.max_abs_diff < 1e-5, rep.detail
    assert small.attn.qkv.weight.shape == (3 * WIDTH // 2, WIDTH // 2)
    assert small.attn.proj.weight.shape == (WIDTH // 2, WIDTH // 2)
    kept_heads = HEADS // 2 if heads == "whole" else HEADS
    if v2:
        assert small.attn.logit_scale.shape[0] == kept_heads
        assert small.get_submodule("attn.cpb_mlp.2").weight.shape[0] == kept_heads
    else:
        assert small.attn.relative_position_bias_table.shape == (49, kept_heads)
    # MACs of the attention are counted and shrink with it
    before, after = macs_report(graph.gm, (X,)), macs_report(small, (X,))
    tokens = 12 * 12  # padded, per example
    assert before.macs >= tokens * (WIDTH * 3 * WIDTH + 2 * 16 * WIDTH + WIDTH * WIDTH)
    assert after.macs < before.macs
    # another input size (no padding, other window count) still matches
    other = torch.randn(1, 8, 12, 3)
    assert verify_equivalence(graph, keep, small, (other,)).passed


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_window_block_slim_matches_oracle(v2, heads, scorer, ratio, min_ratio):
    r = prune_and_check(WindowBlock(v2), X, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                        heads=heads)
    assert r.model.attn.qkv.weight.shape[0] < 3 * WIDTH


class TwiceBlock(WindowBlock):
    """The same attention called twice: its weights are shared by two calls."""

    def forward(self, x):
        x = self.emb(x)
        return self.head(self.attn(x) + self.attn(x * 0.5))


@pytest.mark.parametrize("heads", ["dims", "whole"])
def test_shared_weights_keep_their_scale(heads):
    """With head dims cut, V1's q rows are rescaled in place: shared ones would be
    rescaled twice, so those dims stay; whole heads need no rescale."""
    graph = fxprune.analyze(TwiceBlock().eval(), X, heads=heads)
    group = attention_group(graph)
    if heads == "dims":  # the block's only channel space: nothing else to prune
        assert group.frozen_classes == group.size and "shared" in group.frozen_reason
    else:
        assert group.frozen_classes == 0
        prune_and_check(TwiceBlock(), X, ratio=0.5, min_ratio=0.1, scorer="l1", heads=heads)


def tiny_swin(v2: bool) -> nn.Module:
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    extra = extra if v2 else {}
    torch.manual_seed(0)
    return swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                window_size=[4, 4], num_classes=10, **extra).eval()


IMAGE = torch.randn(2, 3, 40, 40)  # 10 x 10 tokens: padded windows, then patch merging to 5 x 5


def test_patch_merging_keeps_channel_labels():
    graph = fxprune.analyze(tiny_swin(False), IMAGE)
    assert not graph.unhandled
    stage1 = attention_group_of(graph, "features.1.0.attn.qkv.weight#0")
    assert "features.2.reduction.in_features" in stage1.members  # 4 copies of stage 1's channels
    stage2 = attention_group_of(graph, "features.3.0.attn.qkv.weight#0")
    assert "features.2.reduction.out_features" in stage2.members


def attention_group_of(graph, member):
    return next(g for g in graph.groups if member in g.members)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_tiny_swin_slim_matches_oracle(v2, heads, scorer, ratio, min_ratio):
    model = tiny_swin(v2)
    r = fxprune.prune(model, (IMAGE,), ratio=ratio, min_ratio=min_ratio, scorer=scorer, heads=heads)
    rep = verify_equivalence(r.graph, r.keep, r.model, (IMAGE,))
    assert rep.passed, rep.detail  # the residual crosses LayerNorm: inexact classes structurally
    assert r.params_after < 0.8 * r.params_before
    widths = {n: p.shape for n, p in r.model.named_parameters()}
    pruned_attention = [n for n, s in widths.items() if n.endswith("attn.qkv.weight")
                        and s[0] < 3 * dict(model.named_parameters())[n].shape[1]]
    pruned_mlp = [n for n, s in widths.items() if n.endswith("mlp.0.weight")
                  and s[0] < dict(model.named_parameters())[n].shape[0]]
    assert pruned_mlp
    # the attention is the residual stream's channel space: prunable in every block, and
    # cut when the global ranking reaches it (L1 on V2 keeps it whole)
    for block in ("features.1.0", "features.1.1", "features.3.0", "features.3.1"):
        assert attention_group_of(r.graph, f"{block}.attn.qkv.weight#0").prunable
    assert pruned_attention or (v2 and scorer == "l1")
    with torch.no_grad():
        assert r.model(torch.randn(1, 3, 32, 48)).shape == (1, 10)
