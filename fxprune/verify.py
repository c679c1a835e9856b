"""Equivalence oracle: the slim model must equal the dense model with pruned channels
masked.

The reference is independent of surgery: it runs the *dense* traced graph and, after
every node, multiplies each tensor by the keep mask its channel labels imply (so every
value belonging to a pruned channel is zero everywhere). For models whose pruned
channels only meet ops that commute with that masking (conv, linear, batchnorm,
elementwise, pooling, concat, ...) the slim output must match numerically. When a pruned
channel meets an op that mixes statistics across channels (LayerNorm, GroupNorm with one
group, softmax or mean over channels) the classes are marked *inexact* and only
structure is checked: the slim model runs and gives outputs of the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .analysis import META_LABELS, ChannelGraph
from .ops import module_rule_for
from .trace import tensor_leaves


@dataclass
class EquivalenceReport:
    exact: bool  # whether a numerical match was required
    max_abs_diff: float
    output_scale: float
    passed: bool
    detail: str

    def __str__(self) -> str:
        return self.detail


class _MaskedInterpreter(fx.Interpreter):
    def __init__(self, graph: ChannelGraph, keep: np.ndarray):
        super().__init__(graph.gm)
        self.g = graph
        self.keep = keep
        self.module_masks: dict[str, dict[str, np.ndarray]] = {}
        for s in graph.spaces.values():
            mask = keep[graph.atom_class[s.atoms]]
            if s.kind == "module" and not mask.all():
                self.module_masks.setdefault(s.owner, {})[s.attr] = mask

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        labels = n.meta.get(META_LABELS)
        return self._mask(out, labels) if labels is not None else out

    def call_module(self, target, args, kwargs):
        # a leaf with channels inside (attention heads) gives its own masked reference
        module = self.fetch_attr(target)
        masks = self.module_masks.get(target)
        rule = module_rule_for(module) if masks else None
        ref = rule.masked(module, masks) if rule is not None else None
        return (ref if ref is not None else module)(*args, **kwargs)

    def _mask(self, value, labels):
        if isinstance(value, torch.Tensor) and isinstance(labels, list):
            for d, arr in enumerate(labels):
                if arr is None or d >= value.dim():
                    continue
                m = self.keep[self.g.atom_class[arr]]
                if m.all():
                    continue
                shape = [1] * value.dim()
                shape[d] = len(m)
                # where, not a product: a pruned channel holding inf or NaN must read 0
                # (inf * 0 is NaN), as it does in the slim model where it does not exist
                mask = torch.as_tensor(m, dtype=torch.bool, device=value.device).view(shape)
                value = torch.where(mask, value, torch.zeros((), dtype=value.dtype,
                                                             device=value.device))
            return value
        if isinstance(value, (tuple, list)) and isinstance(labels, (tuple, list)):
            return type(value)(self._mask(v, lab) for v, lab in zip(value, labels))
        return value


def masked_forward(graph: ChannelGraph, keep: np.ndarray, inputs: tuple) -> Any:
    gm = graph.gm
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            return _MaskedInterpreter(graph, keep).run(*inputs)
    finally:
        gm.train(was)


def verify_equivalence(graph: ChannelGraph, keep: np.ndarray, slim_model: torch.nn.Module,
                       inputs: tuple, rtol: float = 1e-4) -> EquivalenceReport:
    """Compare the slim model with the masked dense reference on ``inputs``."""
    pruned = ~keep
    exact = not bool((pruned & graph.class_inexact).any())
    ref = tensor_leaves(masked_forward(graph, keep, inputs))
    was = slim_model.training
    slim_model.eval()
    try:
        with torch.no_grad():
            got = tensor_leaves(slim_model(*inputs))
    finally:
        slim_model.train(was)
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return EquivalenceReport(exact, float("inf"), 0.0, False,
                                 f"output shapes differ: {[tuple(t.shape) for t in ref]} vs "
                                 f"{[tuple(t.shape) for t in got]}")
    diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()),
               default=0.0)
    scale = max((float(a.double().abs().max()) for a in ref if a.numel()), default=0.0)
    if not exact:
        return EquivalenceReport(False, diff, scale, True,
                                 "structure check only (pruned channels meet cross-channel "
                                 f"statistics); shapes match, max diff {diff:.3g}")
    tol = rtol * max(1.0, scale)
    passed = diff <= tol
    return EquivalenceReport(True, diff, scale, passed,
                             f"max |slim - masked dense| = {diff:.3g} (tolerance {tol:.3g})")


__all__ = ["verify_equivalence", "masked_forward", "EquivalenceReport"]
