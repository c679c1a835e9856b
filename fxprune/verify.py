"""Equivalence oracle: the slim model must equal the dense model with pruned channels
masked.

The reference is independent of surgery: it runs the *dense* traced graph and, after
every node, zeroes each tensor where its channel labels name a pruned class (so every
value belonging to a pruned channel is zero everywhere). For channels that only meet ops
that commute with that masking (conv, linear, batchnorm, elementwise, pooling, concat,
attention heads and head dims, ...) the slim output must match numerically.

Per-class verification. A class that meets an op mixing statistics across channels
(LayerNorm over the residual stream, GroupNorm with one group, softmax or mean over
channels) is *inexact*: pruning it is structurally valid, but masking cannot reproduce
it. One inexact class must not hide the others, so when some pruned classes are inexact
the oracle checks a *variant*: the same keep mask with every inexact class kept whole,
slimmed by the same surgery and compared numerically with the masked dense model of that
variant. Every exactly prunable class (heads, head dims, MLP hidden, conv channels) is
thereby checked numerically; the inexact ones are checked structurally (the real slim
model runs and gives outputs of the reference's shapes). ``numeric_fraction`` says which
share of the pruned channel classes was checked numerically. Cost: one extra slim and
one extra forward, and only when inexact classes were pruned.

A graph that is not one plain partition (``heads="both"``: two passes composed, see
``fxprune.composed``) provides ``oracle_masks(keep)`` and ``slim(keep)`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx

from .analysis import META_LABELS, ChannelGraph, Space
from .ops import module_rule_for
from .shapes import mutable_args
from .surgery import slim
from .trace import tensor_leaves


@dataclass
class EquivalenceReport:
    exact: bool  # every pruned class was checked numerically (none is inexact)
    max_abs_diff: float
    output_scale: float
    passed: bool
    detail: str
    # share of the pruned channel classes checked numerically (1.0 when exact; the rest,
    # inexact classes, are checked structurally)
    numeric_fraction: float = 1.0
    pruned_classes: int = 0

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "exact": self.exact, "max_abs_diff": self.max_abs_diff,
                "numeric_fraction": self.numeric_fraction, "pruned_classes": self.pruned_classes,
                "detail": self.detail}


class ClassMasks:
    """How the oracle masks: one keep mask over the classes of one channel graph."""

    def __init__(self, graph: ChannelGraph, keep: np.ndarray):
        self.graph = graph
        self.keep = keep

    def dim_masks(self, node: fx.Node) -> Any:
        """Per output dim of ``node``, the keep mask along it (None: not a channel dim),
        nested like the output (tuples of tensors)."""
        return label_masks(node.meta.get(META_LABELS), self.classes)

    def classes(self, atoms: np.ndarray) -> np.ndarray:
        """Keep mask of a label array (atoms as members of their classes)."""
        return self.keep[self.graph.atom_class[atoms]]

    def atoms(self, atoms: np.ndarray) -> np.ndarray:
        """Keep mask of atoms as indices of their spaces (not as labels after a reshape)."""
        return self.keep[self.graph.atom_class[atoms]]

    def space(self, space: Space) -> np.ndarray:
        return self.atoms(space.atoms)


def label_masks(labels: Any, keep_of) -> Any:
    """Labels -> the same structure with each label array replaced by ``keep_of(array)``."""
    if labels is None:
        return None
    if isinstance(labels, list) and all(a is None or isinstance(a, np.ndarray) for a in labels):
        return [None if a is None else keep_of(a) for a in labels]
    if isinstance(labels, (tuple, list)):
        return type(labels)(label_masks(x, keep_of) for x in labels)
    return None


def oracle_masks(graph: ChannelGraph, keep: np.ndarray) -> ClassMasks:
    hook = getattr(graph, "oracle_masks", None)
    return hook(keep) if hook is not None else ClassMasks(graph, keep)


def slim_for(graph: ChannelGraph, keep: np.ndarray) -> torch.nn.Module:
    hook = getattr(graph, "slim", None)
    return hook(keep) if hook is not None else slim(graph, keep)


class _MaskedInterpreter(fx.Interpreter):
    def __init__(self, graph: ChannelGraph, masks: ClassMasks):
        super().__init__(graph.gm)
        self.masks = masks
        self.module_masks: dict[str, dict[str, np.ndarray]] = {}
        for s in graph.spaces.values():
            mask = masks.space(s)
            if s.kind == "module" and not mask.all():
                self.module_masks.setdefault(s.owner, {})[s.attr] = mask

    def fetch_args_kwargs_from_env(self, n: fx.Node):
        # plain lists, as the traced model's own code gets them: some callees mutate
        # theirs (torchvision's video swin ``_get_window_and_shift_size``)
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return mutable_args(args), mutable_args(kwargs)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        masks = self.masks.dim_masks(n)
        return self._mask(out, masks) if masks is not None else out

    def call_module(self, target, args, kwargs):
        # a leaf with channels inside (attention heads) gives its own masked reference
        module = self.fetch_attr(target)
        masks = self.module_masks.get(target)
        rule = module_rule_for(module) if masks else None
        ref = rule.masked(module, masks) if rule is not None else None
        return (ref if ref is not None else module)(*args, **kwargs)

    def _mask(self, value, masks):
        if isinstance(value, torch.Tensor) and isinstance(masks, list):
            for d, m in enumerate(masks):
                if not isinstance(m, np.ndarray) or d >= value.dim() or m.all():
                    continue
                shape = [1] * value.dim()
                shape[d] = len(m)
                # where, not a product: a pruned channel holding inf or NaN must read 0
                # (inf * 0 is NaN), as it does in the slim model where it does not exist
                mask = torch.as_tensor(m, dtype=torch.bool, device=value.device).view(shape)
                value = torch.where(mask, value, torch.zeros((), dtype=value.dtype,
                                                             device=value.device))
            return value
        if isinstance(value, (tuple, list)) and isinstance(masks, (tuple, list)):
            return type(value)(self._mask(v, m) for v, m in zip(value, masks))
        return value


def masked_forward(graph: ChannelGraph, keep: np.ndarray, inputs: tuple) -> Any:
    gm = graph.gm
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            return _MaskedInterpreter(graph, oracle_masks(graph, keep)).run(*inputs)
    finally:
        gm.train(was)


# torchvision's ViT zero-initialises its classifier: with random weights every output is 0
_VACUOUS = ("the masked dense output is all zero, so nothing was compared numerically (a "
            "zero-initialised last layer?); shapes match")


def _run(model: torch.nn.Module, inputs: tuple) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tensor_leaves(model(*inputs))
    finally:
        model.train(was)


def _shapes_differ(ref: list[torch.Tensor], got: list[torch.Tensor]) -> str | None:
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return (f"output shapes differ: {[tuple(t.shape) for t in ref]} vs "
                f"{[tuple(t.shape) for t in got]}")
    return None


def _max_diff(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()),
               default=0.0)
    scale = max((float(a.double().abs().max()) for a in ref if a.numel()), default=0.0)
    return diff, scale


def verify_equivalence(graph: ChannelGraph, keep: np.ndarray, slim_model: torch.nn.Module,
                       inputs: tuple, rtol: float = 1e-4) -> EquivalenceReport:
    """Compare the slim model with the masked dense reference on ``inputs``; when some
    pruned classes are inexact, check the others numerically on a variant that keeps the
    inexact ones (see the module docstring)."""
    pruned = ~keep
    n_pruned = int(pruned.sum())
    inexact = pruned & graph.class_inexact
    n_inexact = int(inexact.sum())
    got = _run(slim_model, inputs)
    if not n_inexact:
        ref = tensor_leaves(masked_forward(graph, keep, inputs))
        if (why := _shapes_differ(ref, got)) is not None:
            return EquivalenceReport(True, float("inf"), 0.0, False, why, 1.0, n_pruned)
        diff, scale = _max_diff(ref, got)
        tol = rtol * max(1.0, scale)
        if scale == 0.0 and n_pruned:
            return EquivalenceReport(True, diff, scale, diff <= tol, _VACUOUS, 0.0, n_pruned)
        return EquivalenceReport(True, diff, scale, diff <= tol,
                                 f"max |slim - masked dense| = {diff:.3g} (tolerance {tol:.3g}); "
                                 f"all {n_pruned:,} pruned channel classes checked numerically",
                                 1.0, n_pruned)
    variant = keep | graph.class_inexact  # every inexact class kept whole
    n_numeric = n_pruned - n_inexact
    fraction = n_numeric / n_pruned
    share = f"{n_numeric:,} of {n_pruned:,} pruned channel classes ({100 * fraction:.0f}%)"
    if n_numeric:
        try:
            variant_model = slim_for(graph, variant)
        except Exception as exc:  # noqa: BLE001 - a surgery bug: report it, the caller decides
            return EquivalenceReport(False, float("inf"), 0.0, False,
                                     f"slimming the exact-classes variant failed: {exc}",
                                     fraction, n_pruned)
        ref = tensor_leaves(masked_forward(graph, variant, inputs))
        variant_got = _run(variant_model, inputs)
        del variant_model
        why = _shapes_differ(ref, variant_got)
        diff, scale = (float("inf"), 0.0) if why else _max_diff(ref, variant_got)
    else:  # all pruned classes are inexact: nothing to compare numerically
        ref, why, diff, scale = tensor_leaves(masked_forward(graph, keep, inputs)), None, 0.0, 0.0
    if why is not None:
        return EquivalenceReport(False, diff, scale, False, f"exact-classes variant: {why}",
                                 fraction, n_pruned)
    if (why := _shapes_differ(ref, got)) is not None:
        return EquivalenceReport(False, float("inf"), scale, False, why, fraction, n_pruned)
    tol = rtol * max(1.0, scale)
    if scale == 0.0 and n_numeric:
        return EquivalenceReport(False, diff, scale, diff <= tol, _VACUOUS, 0.0, n_pruned)
    numeric = (f"max |slim - masked dense| = {diff:.3g} (tolerance {tol:.3g}) with the "
               f"{n_inexact:,} inexact classes kept" if n_numeric else "none checked numerically")
    detail = (f"{share} checked numerically: {numeric}; the inexact ones (cross-channel "
              "statistics) structurally: shapes match")
    return EquivalenceReport(False, diff, scale, diff <= tol, detail, fraction, n_pruned)


def numeric_share(reports: list[EquivalenceReport]) -> float | None:
    """Share of the pruned channel classes checked numerically over several reports (the
    parts of a model pruned part by part), weighted by their pruned classes."""
    pruned = sum(r.pruned_classes for r in reports)
    if not reports:
        return None
    if not pruned:
        return 1.0
    return sum(r.numeric_fraction * r.pruned_classes for r in reports) / pruned


__all__ = [
    "ClassMasks",
    "EquivalenceReport",
    "label_masks",
    "masked_forward",
    "numeric_share",
    "oracle_masks",
    "verify_equivalence",
]
