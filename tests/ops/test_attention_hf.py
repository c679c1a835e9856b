"""HuggingFace models from tiny random configs, pruned WHOLE from Python with no model code.

transformers 5 removed ``transformers.utils.fx`` and its forwards take ``**kwargs``
through decorators plain torch.fx cannot trace; ``fxprune.trace_model`` then captures
the model with TorchDynamo (``fxprune.capture``): one graph of torch-level calls keyed by
the model's own qualified names. Attention heads/head dims, MLP hidden and the residual
stream are pruned, each model is checked against the masked-dense oracle at both
settings (synflow 0.85/0.15 and l1 0.5), and the plan replays on a fresh instance.
Skipped when transformers is not installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.capture import capture_model, prefers_capture
from fxprune.verify import verify_equivalence

transformers = pytest.importorskip("transformers")

# batch 2: a dim of size 1 would be specialised by dynamo into a constant
IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
SETTINGS = [("synflow", 0.85, 0.15), ("l1", 0.5, 0.15)]


def gpt2():
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def llama():
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


# (builder, residual-stream weight and its dim, attention weights and their output dim)
MODELS = {
    "gpt2": (gpt2, ("transformer.wte.weight", 1), [("transformer.h.{i}.attn.c_attn.weight", 1)]),
    "llama": (llama, ("model.embed_tokens.weight", 1),
              [(f"model.layers.{{i}}.self_attn.{p}_proj.weight", 0) for p in "qkv"]),
    "bert": (bert, ("bert.embeddings.word_embeddings.weight", 1),
             [(f"bert.encoder.layer.{{i}}.attention.self.{p}.weight", 0) for p in ("query", "key", "value")]),
}


def reference(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, return_dict=False)[0]


@pytest.fixture(scope="module", params=list(MODELS))
def analysed(request):
    """One capture + analysis per model, shared by both settings (``prune(graph=...)``)."""
    build, residual, attention = MODELS[request.param]
    torch.manual_seed(0)
    model = build()
    return request.param, model, fxprune.analyze(model, (IDS,)), residual, attention


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_hf_model_prunes_whole_and_matches_the_oracle(analysed, scorer, ratio, min_ratio):
    _, model, graph, (residual, residual_dim), attention = analysed
    assert graph.gm.meta.get("fxprune_captured") == "dynamo"
    result = fxprune.prune(model, (IDS,), ratio=ratio, min_ratio=min_ratio, scorer=scorer, graph=graph)
    assert result.params_after < 0.75 * result.params_before, (result.params_before, result.params_after)
    dense, slim = model.get_parameter, result.model.get_parameter  # by name, tied ones included
    # the residual stream (embedding width) and every layer's attention projections shrink
    assert slim(residual).shape[residual_dim] < dense(residual).shape[residual_dim]
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and lm_head.weight is dense(residual):  # GPT-2's tied LM head stays tied
        assert slim("lm_head.weight") is slim(residual)
    for i in range(2):
        for pattern, dim in attention:
            key = pattern.format(i=i)
            assert slim(key).shape[dim] < dense(key).shape[dim], key
    report = verify_equivalence(result.graph, result.keep, result.model, (IDS,))
    assert report.passed, report.detail
    assert report.numeric_fraction > 0.5, report.detail  # heads, head dims, MLP: numerically
    # the slim model runs at another batch size and sequence length, with the dense shapes
    other = torch.randint(0, 100, (3, 5))
    with torch.no_grad():
        assert result.model(other)[0].shape == reference(model, other).shape


def test_plan_is_keyed_by_original_names_and_replays(analysed):
    name, model, _, _, _ = analysed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # no graph=: prune captures the caller's model itself (read-only analysis)
    result = fxprune.prune(model, (IDS,), ratio=0.5, min_ratio=0.15, scorer="l1")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    names = {n for n, _ in [*model.named_modules(), *model.named_parameters(), *model.named_buffers()]}
    assert set(result.plan.modules) <= names and set(result.plan.parameters) <= names
    assert result.plan.modules  # nn.Linear/Embedding/LayerNorm calls are modules again
    torch.manual_seed(0)
    fresh = MODELS[name][0]()
    replayed = fxprune.apply_plan(fresh, result.plan.to_dict(), (IDS,))
    other = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        assert torch.equal(replayed(other)[0], result.model(other)[0])


def test_captured_graph_equals_the_model_and_pickles(tmp_path):
    torch.manual_seed(0)
    model = llama()
    gm = capture_model(model, (IDS,))
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["input_ids"]
    assert "model.layers.0.self_attn.q_proj" in dict(gm.named_modules())  # original names
    assert not any(n.target is torch.ops.aten.sym_size.int for n in gm.graph.nodes)
    other = torch.randint(0, 100, (3, 7))
    with torch.no_grad():
        assert torch.equal(gm(other)[0], reference(model, other))
    torch.save(gm, tmp_path / "gm.pt")
    back = torch.load(tmp_path / "gm.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(back(other)[0], gm(other)[0])


def test_eager_attention_prunes_too():
    torch.manual_seed(0)
    model = gpt2()
    model.config._attn_implementation = "eager"  # softmax(q k^T) v instead of fused SDPA
    result = fxprune.prune(model, (IDS,), ratio=0.5, min_ratio=0.15, scorer="l1")
    report = verify_equivalence(result.graph, result.keep, result.model, (IDS,))
    assert report.passed, report.detail
    assert result.params_after < 0.75 * result.params_before


class SizeBranch(nn.Module):
    """A Python branch on an input size: torch.fx cannot trace it, dynamo specialises it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 2
        return self.b(torch.relu(self.a(x)))


def test_other_models_are_captured_only_when_asked():
    model, x = SizeBranch().eval(), torch.randn(2, 8)
    assert not prefers_capture(model) and prefers_capture(gpt2())
    gm = capture_model(model, (x,))
    result = fxprune.prune(gm, (x,), ratio=0.5, min_ratio=0.1, scorer="l1")
    assert result.plan.modules["a"]["out_features"]  # keyed by the model's own names
    report = verify_equivalence(result.graph, result.keep, result.model, (x,))
    assert report.passed and report.exact, report.detail
    replayed = fxprune.apply_plan(capture_model(model, (x,)), result.plan, (x,))
    with torch.no_grad():
        assert torch.equal(replayed(x), result.model(x))


class TiedLM(nn.Module):
    """An LM head sharing its weight with the embedding (GPT-2, LLaMA with tie_word_embeddings)."""

    def __init__(self):
        super().__init__()
        self.embed, self.hidden = nn.Embedding(50, 16), nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(x + torch.relu(self.hidden(x)))  # one residual width end to end


def test_tied_weights_stay_tied_after_slimming():
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 50, (2, 6))
    result = fxprune.prune(model, (ids,), ratio=0.5, min_ratio=0.1, scorer="l1")
    slim = result.model
    assert slim.embed.weight.shape[1] < 16 and slim.head.weight is slim.embed.weight
    assert result.params_after == sum(p.numel() for p in slim.parameters())
    report = verify_equivalence(result.graph, result.keep, slim, (ids,))
    assert report.passed and report.exact, report.detail
