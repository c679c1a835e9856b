"""fxprune vs Torch-Pruning's documented recipes on transformers, side by side in one run.

Setting: ratio 0.5, L1 magnitude, the final classifier / LM head kept, ``weights=None``
models with random weights, input 1x3x224x224 (GPT: 1x64 tokens). Parameters are counted
on the pruned models themselves.

Torch-Pruning, as its examples document it (VainF/Torch-Pruning ``examples/``):

* torchvision vit_b_16 and convnext_tiny: ``torchvision_models/torchvision_pruning.py``:
  ``MagnitudePruner(importance=MagnitudeImportance(p=1), ch_sparsity=0.5,
  global_pruning=False, round_to=num_heads (ViT), ignored_layers=[classifier])``, then
  ``model.hidden_dim = model.conv_proj.out_channels`` for ViT;
* timm deit_tiny / vit_small: ``transformers/prune_timm_vit.py``: every
  ``Attention.forward`` replaced by one whose last reshape is ``(B, N, -1)``,
  ``num_heads={attn.qkv: attn.num_heads}``, ``prune_head_dims=True``,
  ``prune_num_heads=False``, ``round_to=2``, ``global_pruning`` off by default, then
  ``attn.num_heads``/``attn.head_dim`` written back;
* GPT block stack (``nn.MultiheadAttention`` with the float causal mask of the PyTorch
  docs): the generic recipe (``MagnitudePruner``, L1, ratio 0.5, LM head ignored;
  Torch-Pruning handles ``nn.MultiheadAttention`` itself);
* HuggingFace transformers 5 from tiny random configs (``hf_bert``: a sequence classifier,
  ``hf_gpt2``, ``hf_llama`` with GQA; 2 layers, width 64, 4 heads, 2x16 token ids; not in
  the default list, ask for them with ``--models``): ``transformers/prune_hf_bert.py``
  (``num_heads`` of query/key/value, ``prune_num_heads=True``, ``prune_head_dims=False``,
  ``head_pruning_ratio=0.5``, ``global_pruning=True``, then the heads written back) and
  ``LLMs/prune_llm.py`` (``num_heads`` of q/k/v with the kv heads, whole heads,
  ``round_to=4``, ``global_pruning=False``, then ``config.hidden_size``/``head_dim``... written
  back), both with the L1 importance of this table instead of their group L2 norm; GPT-2 has
  no recipe (its ``Conv1D`` is not an ``nn.Linear``): the generic one. fxprune captures
  these models with TorchDynamo (``fxprune.capture``), with no model code either.

Those recipes prune EVERY group by the same ratio (``global_pruning=False``), so fxprune is
shown both with its default global ranking (``min_ratio=0.15``) and with its uniform
option (``uniform=True``: half of every group). fxprune gets no model-specific code: the
same ``fxprune.prune(model, x, ...)`` call for every model. "ok" for fxprune means the
slim model equals the masked dense model (or, where the pruned channels meet LayerNorm or
softmax statistics, runs with the dense output shapes); for Torch-Pruning that the pruned
model runs and gives the dense output shape.

A Torch-Pruning run longer than ``--tp-cap`` seconds (default 600) counts as failed.

    python benchmarks/transformers.py
    python benchmarks/transformers.py --models gpt,deit_tiny --tp-global
    python benchmarks/transformers.py --models hf_bert,hf_gpt2,hf_llama --tp-cap 300
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import signal
import sys
import time
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import fxprune

RATIO = 0.5
MODELS = ["vit_b_16", "deit_tiny", "vit_small", "convnext_tiny", "gpt"]
HF_MODELS = ["hf_bert", "hf_gpt2", "hf_llama"]


# ----------------------------------------------------------------------------- models
class GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int, seq: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        # the additive float causal mask of the PyTorch docs (0 / -inf)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A small GPT: token + position embeddings, ``layers`` pre-LN blocks, LM head."""

    def __init__(self, vocab=256, width=128, heads=4, layers=3, seq=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Parameter(torch.randn(1, seq, width) * 0.02)
        self.blocks = nn.Sequential(*(GPTBlock(width, heads, seq) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):  # (B, T) token ids
        x = self.wte(idx) + self.wpe
        return self.lm_head(self.ln_f(self.blocks(x)))


def installed_transformers():
    """The transformers package: this script's own name shadows it when run as a file."""
    here = os.path.dirname(os.path.abspath(__file__))
    module = sys.modules.get("transformers")
    if module is None or os.path.dirname(os.path.abspath(getattr(module, "__file__", ""))) == here:
        sys.modules.pop("transformers", None)
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        try:
            module = importlib.import_module("transformers")
        finally:
            sys.path[:] = saved
    return module


def build_hf(name: str) -> nn.Module:
    """A tiny HuggingFace model from a random config (no download)."""
    transformers = installed_transformers()
    size = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 1000}
    if name == "hf_bert":
        config = transformers.BertConfig(**size, intermediate_size=256, num_labels=3)
        return transformers.BertForSequenceClassification(config).eval()
    if name == "hf_gpt2":
        config = transformers.GPT2Config(**size, n_positions=64, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(**size, intermediate_size=256, num_key_value_heads=2,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in HF_MODELS:
        return build_hf(name), torch.randint(0, 1000, (2, 16))
    if name == "gpt":
        return GPT().eval(), torch.randint(0, 256, (1, 64))
    x = torch.randn(1, 3, 224, 224)
    if name in ("vit_b_16", "convnext_tiny"):
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval(), x
    import timm

    timm_name = {"deit_tiny": "deit_tiny_patch16_224", "vit_small": "vit_small_patch16_224"}[name]
    return timm.create_model(timm_name, pretrained=False).eval(), x


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def first_output(out):
    """The tensor a model returns, or the first one of a HF ``ModelOutput``/tuple."""
    return out if isinstance(out, torch.Tensor) else out[0]


# ----------------------------------------------------------------------------- Torch-Pruning
def _timm_attention_forward(self, x, attn_mask=None, is_causal=False):
    """prune_timm_vit.py's replacement forward (its last reshape is ``(B, N, -1)``),
    with the arguments the installed timm's Block passes."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    x = x.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(self.norm(x)))


def torch_pruning_hf_recipe(name: str, model: nn.Module, x: torch.Tensor, global_pruning: bool):
    """prune_hf_bert.py / prune_llm.py (whole heads) with L1; GPT-2: the generic recipe."""
    import torch_pruning as tp

    num_heads, kwargs = {}, {}
    attention = [m for n, m in model.named_modules() if type(m).__name__ in ("BertSelfAttention", "LlamaAttention")]
    for m in attention:
        if name == "hf_bert":
            num_heads.update({m.query: m.num_attention_heads, m.key: m.num_attention_heads,
                              m.value: m.num_attention_heads})
        else:
            num_heads.update({m.q_proj: model.config.num_attention_heads,
                              m.k_proj: model.config.num_key_value_heads,
                              m.v_proj: model.config.num_key_value_heads})
    if num_heads:
        kwargs = {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False,
                  "head_pruning_ratio": RATIO}
    if name == "hf_llama":
        kwargs["round_to"] = 4
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO, global_pruning=global_pruning or name == "hf_bert",
        ignored_layers=[classifier(model)], output_transform=lambda out: first_output(out).sum(),
        **kwargs)
    for group in pruner.step(interactive=True):
        group.prune()
    for m in attention:  # the recipes' write-backs
        if name == "hf_bert":
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        else:
            m.num_key_value_groups = m.q_proj.out_features // m.k_proj.out_features
    if name == "hf_llama":
        model.config.hidden_size = model.lm_head.in_features
    return model


def torch_pruning_recipe(name: str, model: nn.Module, x: torch.Tensor, global_pruning: bool):
    import torch_pruning as tp

    if name in HF_MODELS:
        return torch_pruning_hf_recipe(name, model, x, global_pruning)
    kwargs: dict = {}
    attention = []
    if name in ("deit_tiny", "vit_small"):
        from timm.models.vision_transformer import Attention

        num_heads = {}
        for m in model.modules():
            if isinstance(m, Attention):
                m.forward = types.MethodType(_timm_attention_forward, m)
                num_heads[m.qkv] = m.num_heads
                attention.append(m)
        kwargs = {"num_heads": num_heads, "prune_head_dims": True, "prune_num_heads": False,
                  "round_to": 2}
    elif name == "vit_b_16":
        kwargs = {"round_to": model.encoder.layers[0].num_heads}
    pruner = tp.pruner.MagnitudePruner(
        model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO, global_pruning=global_pruning,
        ignored_layers=[classifier(model)], **kwargs)
    pruner.step()
    if name == "vit_b_16":  # torchvision reads hidden_dim in forward
        model.hidden_dim = model.conv_proj.out_channels
    for m in attention:
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    return model


# ----------------------------------------------------------------------------- runs
def run_fxprune(model, x, uniform: bool):
    result = fxprune.prune(model, x, ratio=RATIO, min_ratio=0.15, scorer="l1", uniform=uniform)
    report = fxprune.verify_equivalence(result.graph, result.keep, result.model, (x,))
    status = ("ok (exact)" if report.exact else "ok (shapes)") if report.passed else \
        f"MISMATCH {report.detail}"
    return result.params_after, status


def _over_time(signum, frame):
    raise TimeoutError("over the time cap")


def run_torch_pruning(name, model, x, global_pruning, cap_s: int = 0):
    with torch.no_grad():
        dense_shape = first_output(model(x)).shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cap_s:  # Torch-Pruning's grouping never finishes on some models (HF LLaMA)
                signal.signal(signal.SIGALRM, _over_time)
                signal.alarm(cap_s)
            try:
                pruned = torch_pruning_recipe(name, model, x, global_pruning)
            finally:
                signal.alarm(0)
        with torch.no_grad():
            out = first_output(pruned(x))
        status = "ok" if out.shape == dense_shape else f"wrong shape {tuple(out.shape)}"
        return count_params(pruned), status
    except Exception as exc:  # noqa: BLE001  (any failure is a table cell, not a stop)
        return None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {MODELS + HF_MODELS}")
    parser.add_argument("--tp-cap", type=int, default=600,
                        help="seconds before a Torch-Pruning run counts as failed (0: none)")
    parser.add_argument("--tp-global", action="store_true",
                        help="also run Torch-Pruning with global_pruning=True")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.models.split(","):
        model, x = build(name)
        dense = count_params(model)
        row = {"model": name, "dense": dense}
        for label, uniform in (("fx_global", False), ("fx_uniform", True)):
            t0 = time.perf_counter()
            row[label], row[label + "_status"] = run_fxprune(model, x, uniform)
            row[label + "_s"] = time.perf_counter() - t0
        for label, glob in (("tp", False), ("tp_global", True)):
            if glob and not args.tp_global:
                continue
            t0 = time.perf_counter()
            row[label], row[label + "_status"] = run_torch_pruning(name, copy.deepcopy(model), x, glob,
                                                                   args.tp_cap)
            row[label + "_s"] = time.perf_counter() - t0
        rows.append(row)
        print(row, flush=True)
    print_table(rows)


def _m(n):
    return "-" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def print_table(rows) -> None:
    cols = ["fx_global", "fx_uniform", "tp"] + (["tp_global"] if any("tp_global" in r for r in rows) else [])
    head = ["model", "dense"] + [f"{c} params" for c in cols] + ["fx_uniform / tp"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ratio = f"{r['fx_uniform'] / r['tp']:.2f}" if r.get("tp") else "-"
        cells = [r["model"], _m(r["dense"])] + [f"{_m(r.get(c))} ({r.get(c + '_status')})" for c in cols]
        print("| " + " | ".join(cells + [ratio]) + " |")


if __name__ == "__main__":
    main()
