"""Data-free and data-driven saliency scorers: structured Synflow (the paper's variant)
and SNIP.

Structured Synflow (hpo-with-pruning-proxy, section 4, Eq. 1-2):

* per-weight score ``S = w * dR/dw`` where ``R`` is the sum of the logits for an input
  of ones, computed once at initialisation (single shot, no iterations);
* the paper drops Synflow's step that makes weights non-negative, so the default keeps
  the weights' signs (``linearize=False``); ``linearize=True`` is the original Synflow
  linearisation: absolute weights and batchnorm neutralised (identity affine);
* channel score (Eq. 2): the mean of ``S`` over all weights of each output channel, one
  number per output channel of every conv/linear (and per index of ``get_attr`` tensors).

Everything runs in float64 on a private copy, in eval mode (an input of ones has zero
batch variance, so batch statistics would divide by ~0). A non-finite score raises a
``ScoreError`` naming the layer.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScoreError
from ..trace import tensor_leaves
from .base import producer_weight, register_scorer


def _first_non_finite(model, inputs) -> str:
    """Name the first node whose output is not finite (the layer that overflowed)."""
    from torch import fx

    found: list[str] = []

    class Finder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if not found and any(not torch.isfinite(t).all() for t in tensor_leaves(out)):
                found.append(f"node '{n.name}'" + (f" (module '{n.target}')" if n.op == "call_module" else ""))
            return out

    with torch.no_grad():
        Finder(model).run(*inputs)
    return found[0] if found else "the output"


def _channel_means(graph, model: nn.Module, saliency) -> dict[str, np.ndarray]:
    """Eq. 2: mean saliency over each output channel's weights, per producer space."""
    out = {}
    for space in graph.producer_spaces():
        got = producer_weight(model, space)
        if got is None:
            continue
        w, dim = got
        if w.grad is None:
            out[space.key] = np.zeros(w.shape[dim])  # unused by the output: no flow
            continue
        s = saliency(w).movedim(dim, 0).reshape(w.shape[dim], -1).mean(1)
        s = s.detach().cpu().numpy()
        if not np.isfinite(s).all():
            raise ScoreError(
                f"non-finite saliency in '{space.owner}' ({space.attr}); the model "
                "overflows even in float64 - try linearize=True or a shallower proxy"
            )
        out[space.key] = s
    return out


@register_scorer("synflow")
class SynflowScorer:
    """Structured single-shot Synflow (data-free)."""

    name = "synflow"
    needs_data = False
    class_level = False

    def __init__(self, linearize: bool = False):
        self.linearize = linearize

    def __call__(self, graph, example_inputs, data=None):
        model = copy.deepcopy(graph.gm).double().eval()
        with torch.no_grad():
            if self.linearize:
                for p in model.parameters():
                    p.abs_()
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        if m.affine:
                            m.weight.fill_(1.0)
                            m.bias.zero_()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        ones = tuple(torch.ones_like(t, dtype=torch.float64) if t.is_floating_point() else t
                     for t in example_inputs)
        R = sum(t.sum() for t in tensor_leaves(model(*ones)))
        if not torch.isfinite(R):
            raise ScoreError(f"Synflow objective is not finite in float64: {_first_non_finite(model, ones)}"
                             " overflows; try linearize=True or check the weights")
        R.backward()
        return _channel_means(graph, model, lambda w: w * w.grad)


@register_scorer("snip")
class SnipScorer:
    """SNIP connection sensitivity ``|w * dL/dw|`` on one labelled batch, per channel."""

    name = "snip"
    needs_data = True
    class_level = False

    def __call__(self, graph, example_inputs, data=None):
        inputs, targets = data
        model = copy.deepcopy(graph.gm).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        logits = tensor_leaves(model(inputs))[0]
        F.cross_entropy(logits, targets).backward()
        return _channel_means(graph, model, lambda w: (w * w.grad).abs())


__all__ = ["SnipScorer", "SynflowScorer"]
