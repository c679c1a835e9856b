"""HuggingFace models from tiny random configs, pruned from Python with no model code.

transformers 5 removed ``transformers.utils.fx`` and its forwards take ``**kwargs``
through decorators plain torch.fx cannot trace, so the model's own forward does not
trace: ``fxprune.prune`` then prunes the largest submodules that do (``fxprune.partial``).
For GPT-2 and LLaMA those are the MLPs (GPT-2's ``Conv1D`` goes through the ``addmm``
rule); the attention modules and the residual stream stay dense. BERT's root fails with
one clear line. Skipped when transformers is not installed.
"""

from __future__ import annotations

import pytest
import torch

import fxprune
from fxprune.errors import TraceError

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 100, (1, 8))


def gpt2():
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def llama():
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("build,hidden", [
    (gpt2, ("transformer.h.{i}.mlp.c_fc.weight", 1)),
    (llama, ("model.layers.{i}.mlp.up_proj.weight", 0)),
])
def test_hf_decoder_mlps_prune_and_match_the_oracle(build, hidden):
    torch.manual_seed(0)
    model = build()
    result = fxprune.prune(model, (IDS,), ratio=0.5, min_ratio=0.15, scorer="l1")
    assert result.params_after < result.params_before
    params = dict(result.model.named_parameters())
    dense = dict(model.named_parameters())
    name, dim = hidden
    for i in range(2):
        key = name.format(i=i)
        assert params[key].shape[dim] < dense[key].shape[dim]
    reports = result.verify()
    assert all(r.passed for r in reports), [r.detail for r in reports if not r.passed]
    with torch.no_grad():
        assert result.model(IDS).logits.shape == model(IDS).logits.shape


def test_bert_root_fails_with_one_line():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    with pytest.raises(TraceError) as info:
        fxprune.prune(transformers.BertModel(config).eval(), (IDS,), ratio=0.5, scorer="l1")
    assert "BertModel" in str(info.value) and "\n" not in str(info.value)
