"""Pruning a model whose own ``forward`` cannot be traced, part by part.

A torchvision detector's ``forward`` loops over a list of images and branches on
``self.training``: torch.fx cannot trace it, but its backbone, FPN and box head trace
fine. ``prune_parts`` finds the largest submodules that trace on their own
(``fxprune.trace.find_traceable_parts``: the model is run once to record the inputs each
submodule is called with), prunes each of them with its outputs kept (a part's outputs
are its graph outputs, which the channel graph always freezes), and returns a deep copy of
the ORIGINAL model object (still a ``FasterRCNN``, say) in which those submodules are
replaced by their slim GraphModules. Everything outside the parts runs unchanged.

Ranking is global across the parts, as for a whole model: every part is scored on the
inputs it was called with, the scores of all parts' channel classes go into one ranking
(``select_across_parts``: the lowest ``ratio`` of all prunable classes are cut, then each
group and layer dimension gets its ``min_ratio`` floor back, as ``select_channels`` does
for one graph), and each part is slimmed with its share of that one selection. A ``flops=`` target budgets the parts' MACs
together; a target object (a latency target) still selects part by part. A part whose
slim copy fails the oracle on any of its calls is kept dense (its share of the cut is not
given to another part); a part that loses no channel in the ranking stays as it was.

One plan covers the whole model: its keys are the original qualified names
(``backbone.body.layer1.0.conv1``), ``settings["parts"]`` lists the parts, and
``apply_parts`` replays it on a fresh instance.

Checks (``PartialPruneResult.verify``): every part against the masked-dense oracle on
the inputs it was called with, and the whole slim model against the whole dense model
with each part replaced by its masked-dense reference.

This module sits next to ``api`` and never imports it: ``api.prune`` hands it a
``PartPruner`` (score one part, slim one part under a given keep mask) and
``api.apply_plan`` a callback that re-applies a plan to one part.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .analysis import ChannelGraph
from .blockers import describe_blockers
from .cost import CostModel, SizeChange, count_params, macs_report
from .errors import FxPruneError, PlanError, TraceError
from .ops import build_channel_graph
from .plan import PrunePlan
from .selection import parse_target, select_channels
from .trace import (
    Leaf,
    TraceablePart,
    UntraceableRoot,
    as_input_tuple,
    capture_module_inputs,
    find_traceable_parts,
    leaves_of,
    tensor_leaves,
)
from .verify import EquivalenceReport, masked_forward, verify_equivalence

# apply_part(module, sub_plan, part_inputs, leaf_modules) -> slim GraphModule
ApplyPart = Callable[[nn.Module, PrunePlan, tuple, list], nn.Module]


@dataclass(frozen=True)
class PartPruner:
    """What ``prune_parts`` needs from ``api.prune`` for one part: its class scores, and its
    ``PruneResult`` under a given keep mask; plus the selection settings."""

    score: Callable[[ChannelGraph, tuple], np.ndarray]  # (graph, part inputs) -> class scores
    finish: Callable[[ChannelGraph, np.ndarray, tuple], Any]  # (graph, keep, inputs) -> PruneResult
    ratio: float
    min_ratio: float
    round_to: int | None = None
    uniform: bool = False
    target: Any = None  # "flops=0.3", or an object with select(graph, scores, inputs, min_ratio, round_to)


@dataclass
class PrunedPart:
    qualname: str
    result: Any  # the part's PruneResult (model, graph, keep, plan, MACs)
    inputs: tuple  # the positional inputs of its first call
    calls: list[tuple]  # the inputs of every call (an FPN head: one per level)


@dataclass
class PartialPruneResult(SizeChange):
    """Like ``PruneResult``, for a model pruned part by part: ``model`` is a copy of the
    user's model object with the pruned parts swapped for slim GraphModules."""

    model: nn.Module
    plan: PrunePlan
    parts: list[PrunedPart]
    skipped: list[tuple[str, str]]  # (qualname, why it is not pruned)
    params_before: int
    params_after: int
    macs_before: int  # per example: the parts exactly, the rest estimated (macs_estimated)
    macs_after: int
    example_inputs: tuple
    dense: nn.Module  # the user's model (read, never written)
    macs_estimated: bool = True
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def leaves(self) -> list[Leaf]:
        return [_prefixed(leaf, part.qualname) for part in self.parts
                for leaf in leaves_of(part.result.graph.gm)]

    def summary(self) -> dict[str, Any]:
        return {
            **self.size_summary(),
            "macs_estimated": self.macs_estimated,
            "channels_before": sum(p.result.graph.num_classes for p in self.parts),
            "channels_after": sum(int(p.result.keep.sum()) for p in self.parts),
            "parts": [p.qualname for p in self.parts],
            "not_pruned": [{"module": q, "reason": why} for q, why in self.skipped],
        }

    def verify(self, rtol: float = 1e-4) -> list[EquivalenceReport]:
        """One report per call of each part (masked-dense oracle on its recorded inputs),
        then one for the whole model (slim vs dense with every part masked)."""
        reports = [verify_equivalence(p.result.graph, p.result.keep, p.result.model, args, rtol)
                   for p in self.parts for args in p.calls]
        reports.append(self._verify_whole(rtol))
        return reports

    def _verify_whole(self, rtol: float) -> EquivalenceReport:
        # shallow copies along the parts' paths: only the swapped parts differ
        reference = _replace_parts(self.dense, {p.qualname: _MaskedPart(p.result) for p in self.parts},
                                   deep=False)
        exact = not any(bool((~p.result.keep & p.result.graph.class_inexact).any()) for p in self.parts)
        ref, got = (tensor_leaves(_run(m, self.example_inputs)) for m in (reference, self.model))
        if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            return EquivalenceReport(exact, float("inf"), 0.0, False, "whole model: output shapes differ "
                                     f"({[tuple(t.shape) for t in ref]} vs {[tuple(t.shape) for t in got]})")
        floats = [(a.double(), b.double()) for a, b in zip(ref, got) if a.numel() and a.is_floating_point()]
        diff = max((float((a - b).abs().max()) for a, b in floats), default=0.0)
        scale = max((float(a.abs().max()) for a, _ in floats), default=0.0)
        if not exact:
            return EquivalenceReport(False, diff, scale, True, "whole model: structure check only; "
                                     f"shapes match, max diff {diff:.3g}")
        tol = rtol * max(1.0, scale)
        return EquivalenceReport(True, diff, scale, diff <= tol,
                                 f"whole model: max |slim - masked dense| = {diff:.3g} (tolerance {tol:.3g})")

    def __rich__(self):
        t = self.size_table(f"fxprune result ({len(self.parts)} traced parts)",
                            "MACs (est.)" if self.macs_estimated else "MACs")
        for part in self.parts:
            r = part.result
            t.add_row(f"part {part.qualname}", f"{r.params_before:,}", f"{r.params_after:,}",
                      f"{r.param_reduction:.2f}x")
        return t


class _MaskedPart(nn.Module):
    """A part's masked-dense reference, usable in place of the part."""

    def __init__(self, result: Any):
        super().__init__()
        self.graph_module = result.graph.gm
        self.result = result

    def forward(self, *args):
        return masked_forward(self.result.graph, self.result.keep, args)


def _run(model: nn.Module, inputs: tuple) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*inputs)
    finally:
        model.train(was)


def _prefixed(leaf: Leaf, prefix: str) -> Leaf:
    return Leaf(f"{prefix}.{leaf.qualname}", leaf.type_name, leaf.kind, leaf.reason, leaf.where)


def _replace_parts(model: nn.Module, replacements: dict[str, nn.Module], deep: bool = True) -> nn.Module:
    """A copy of ``model`` with the submodules named in ``replacements`` swapped (deep
    copy, or with ``deep=False`` shallow copies along the paths only: the rest shared)."""
    out = copy.deepcopy(model) if deep else copy.copy(model)
    if not deep:
        out._modules = dict(out._modules)
    for qualname, module in replacements.items():
        parent_path, _, name = qualname.rpartition(".")
        parent = out
        for step in parent_path.split(".") if parent_path else []:
            child = parent._modules[step]
            if not deep:
                child = copy.copy(child)
                child._modules = dict(child._modules)
                parent._modules[step] = child
            parent = child
        parent._modules[name] = module
    return out


def _rest_macs(model: nn.Module, calls: dict[str, list], parts: list[str]) -> int:
    """MACs outside the parts (whole batch), estimated: each module that owns parameters
    directly is traced alone on the inputs it was called with (``calls``, from
    ``capture_module_inputs``) and counted by the op rules; modules called with keyword
    arguments or failing to trace count nothing."""
    total = 0
    for name, module in model.named_modules():
        if not name or any(name == p or name.startswith(p + ".") for p in parts):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        for args in calls.get(name, []):
            if not args or not all(isinstance(a, torch.Tensor) for a in args):
                continue
            try:
                batch = args[0].shape[0] if args[0].dim() else 1
                total += macs_report(module, args).macs * max(1, batch)
            except TraceError:
                continue
    return total


def prune_parts(model: nn.Module, example_inputs: Any, pruner: PartPruner,
                leaf_modules: Iterable = (), root_error: UntraceableRoot | None = None,
                settings: dict[str, Any] | None = None,
                options: dict[str, Any] | None = None) -> PartialPruneResult:
    """Prune the traceable parts of ``model`` under one global ranking (see the module
    docstring); ``options`` reach the op rules (``build_channel_graph``). Raises the root's
    ``TraceError`` when no part has a prunable channel."""
    inputs = as_input_tuple(example_inputs)
    started = time.perf_counter()
    calls = capture_module_inputs(model, inputs)
    found, skipped = find_traceable_parts(model, inputs, leaf_modules, calls,
                                          _descend_if_leaves_hold_all(options))
    scored: list[tuple[TraceablePart, ChannelGraph, np.ndarray]] = []
    for part in found:
        graph = build_channel_graph(part.gm, options)
        if not graph.prunable_groups():
            skipped.append((part.qualname, "traced, but every channel is frozen (its inputs and outputs are kept)"))
            continue
        try:
            scored.append((part, graph, pruner.score(graph, part.inputs)))
        except FxPruneError as exc:  # e.g. a scorer that needs data, or a non-finite score
            skipped.append((part.qualname, f"scoring it failed, kept dense: {str(exc)[:200]}"))
    if not scored:
        raise root_error or UntraceableRoot(f"{type(model).__name__}: no submodule with prunable channels traces")
    keeps = select_across_parts([g for _, g, _ in scored], [s for _, _, s in scored],
                                [p for p, _, _ in scored], pruner)
    nothing_cut = all(keep.all() for keep in keeps)  # the settings keep everything: say why below
    parts: list[PrunedPart] = []
    for (part, graph, _), keep in zip(scored, keeps):
        if keep.all() and not nothing_cut:
            skipped.append((part.qualname, "no channel of it ranked low enough: kept dense"))
            continue
        try:
            result = pruner.finish(graph, keep, part.inputs)
        except FxPruneError as exc:  # e.g. the slim part does not run: keep it dense
            skipped.append((part.qualname, f"pruning it failed, kept dense: {str(exc)[:200]}"))
            continue
        failed = _first_failed_call(result, part.calls)
        if failed:  # never hand back a part that disagrees with the oracle on any call
            skipped.append((part.qualname, f"slim part failed the oracle ({failed}), kept dense"))
            continue
        parts.append(PrunedPart(part.qualname, result, part.inputs, part.calls))
    if not parts or nothing_cut:  # an answer, not a success
        why = "; ".join(describe_blockers(p.result.graph) for p in parts) or (
            f"nothing to prune in {type(model).__name__}: " + "; ".join(f"{q}: {w}" for q, w in skipped))
        warnings.warn(f"fxprune: {why}", stacklevel=3)
    slim_model = _replace_parts(model, {p.qualname: p.result.model for p in parts})
    batch = inputs[0].shape[0] if inputs[0].dim() else 1
    rest = _rest_macs(model, calls, [p.qualname for p in parts])
    before = rest + sum(_calls_macs(p.result.graph.gm, p.calls) for p in parts)
    after = rest + sum(_calls_macs(p.result.model, p.calls) for p in parts)
    result = PartialPruneResult(slim_model, None, parts, skipped,  # type: ignore[arg-type]
                                count_params(model), count_params(slim_model), before // batch,
                                after // batch, inputs, model)
    result.plan = merge_plans(parts, dict(settings or {}), result.summary())
    result.seconds["total"] = time.perf_counter() - started
    return result


def needs_descent(graph: ChannelGraph) -> bool:
    """True when ``graph`` has nothing prunable but automatic leaves that own parameters:
    the layers worth pruning sit in containers whose own forward does not trace (timm's
    NesT levels on ``int(math.sqrt(T))``, an encoder branching on ``x.ndim``), so pruning
    goes part by part, into those containers."""
    if graph.prunable_groups():
        return False
    return any(leaf.kind == "automatic"
               and any(True for _ in graph.gm.get_submodule(leaf.qualname).parameters())
               for leaf in leaves_of(graph.gm))


def _descend_if_leaves_hold_all(options: dict[str, Any] | None) -> Callable[[TraceablePart], bool]:
    def descend(part: TraceablePart) -> bool:
        if not any(leaf.kind == "automatic" for leaf in leaves_of(part.gm)):
            return False
        return needs_descent(build_channel_graph(part.gm, options))

    return descend


# -- inspect: what an untraceable root's parts look like ---------------------------------------


@dataclass
class PartsReport:
    """``fxprune inspect`` on a model whose own forward does not trace: each submodule
    that traces on its own, with its channel-group report (``InspectReport``), and the
    modules left untraced, with why. Renders itself; ``to_dict`` is the ``--json`` form."""

    model: str
    params: int
    root_reason: str  # why it is pruned part by part (its own forward does not trace, ...)
    parts: list[tuple[str, str, Any]]  # (qualname, class name, InspectReport on its first call)
    not_traced: list[tuple[str, str]]  # (qualname, why): kept as they are when pruning
    max_members: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "params": self.params, "why_part_by_part": self.root_reason,
                "parts": [{**report.to_dict(), "module": q, "type": t} for q, t, report in self.parts],
                "not_traced": [{"module": q, "reason": why} for q, why in self.not_traced]}

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        lines: list[Any] = [Text(f"{self.model} ({self.params:,} params): {self.root_reason}. Pruning works "
                                 f"part by part: the {len(self.parts)} submodules below trace on their own; "
                                 "the rest runs as it is.")]
        summary = Table(title="traced parts", title_justify="left")
        for col, justify in (("module", "left"), ("type", "left"), ("params", "right"), ("groups", "right"),
                             ("prunable channels", "right"), ("leaves", "right")):
            summary.add_column(col, justify=justify)  # type: ignore[arg-type]
        for qualname, type_name, report in self.parts:
            prunable = sum(g["size"] for g in report.groups if g["prunable"])
            total = sum(g["size"] for g in report.groups)
            summary.add_row(qualname, type_name, f"{report.params:,}", str(len(report.groups)),
                            f"{prunable:,} of {total:,}", str(len(report.leaves)))
        lines.append(summary)
        for _, _, report in self.parts:
            if any(g["prunable"] for g in report.groups):
                report.max_members = self.max_members
                lines += [Text(""), report]
        if self.not_traced:
            rest = Table(title="not traced (kept as they are)", title_justify="left")
            rest.add_column("module")
            rest.add_column("why")
            for qualname, why in self.not_traced:
                rest.add_row(qualname, why)
            lines.append(rest)
        return Group(*lines)


MAX_REASON = 300  # characters of the root's trace error shown by inspect

# inspect_part(module, part_inputs, leaf_modules, name) -> InspectReport
InspectPart = Callable[[nn.Module, tuple, list, str], Any]


def inspect_parts(model: nn.Module, example_inputs: Any, inspect_part: InspectPart,
                  leaf_modules: Iterable = (), root_error: UntraceableRoot | None = None,
                  name: str | None = None) -> PartsReport:
    """The ``PartsReport`` of ``model`` (``inspection.inspect_model`` hands itself in as
    ``inspect_part``) whose root does not trace (``root_error``) or which ``needs_descent``
    (``root_error=None``); raises an ``UntraceableRoot`` when no submodule traces."""
    inputs = as_input_tuple(example_inputs)
    found, skipped = find_traceable_parts(model, inputs, leaf_modules,
                                          descend=_descend_if_leaves_hold_all(None))
    if not found:
        raise root_error or UntraceableRoot(f"{type(model).__name__}: no submodule traces")
    if root_error is None:  # it traces, but needs_descent: its prunable layers are in leaves
        reason = "it traces, but every prunable layer sits inside modules that do not trace"
    else:
        reason = str(root_error).split(". Fix:")[0]
        if len(reason) > MAX_REASON:
            reason = reason[:MAX_REASON - 3] + "..."
        reason = f"its own forward does not trace ({reason})"
    reports = []
    for part in found:
        module = model.get_submodule(part.qualname)
        report = inspect_part(module, part.inputs, _inner_leaves(leaf_modules, part.qualname),
                              f"part {part.qualname}")
        for group in report.groups:  # names as in the whole model (and in its plan)
            group["members"] = [_join(part.qualname, m) for m in group["members"]]
        for leaf in report.leaves:
            leaf["qualname"] = _join(part.qualname, leaf["qualname"])
        reports.append((part.qualname, type(module).__name__, report))
    return PartsReport(name or type(model).__name__, count_params(model), reason, reports, skipped)


def _inner_leaves(leaf_modules: Iterable, qualname: str) -> list:
    """``leaf_modules`` as seen from inside part ``qualname`` (types as they are, names relative)."""
    return [x[len(qualname) + 1:] if isinstance(x, str) else x for x in leaf_modules
            if not isinstance(x, str) or x.startswith(qualname + ".")]


# -- one ranking over several parts ----------------------------------------------------------


def select_across_parts(graphs: list[ChannelGraph], scores: list[np.ndarray],
                        parts: list[TraceablePart], pruner: PartPruner) -> list[np.ndarray]:
    """One keep mask per part from one global selection: the lowest ``ratio`` of all the
    parts' prunable classes (ties: earlier part, then lower class id) are cut, then each
    part's floors apply (``select_channels`` on that part with its share of the cut: the
    floors are per group, layer dimension and tensor dim, all inside one part). For
    ``flops=`` the global ratio whose parts' summed MACs (each part weighted by its calls'
    batch) reach the budget. A target object selects per part."""
    if pruner.target is not None and not isinstance(pruner.target, str):
        return [pruner.target.select(g, s, p.inputs, pruner.min_ratio, pruner.round_to)
                for g, s, p in zip(graphs, scores, parts)]

    def select(ratio: float) -> list[np.ndarray]:
        shares = ([ratio] * len(graphs) if pruner.uniform  # per group anyway: no global cut
                  else _shares_of_global_cut(graphs, scores, ratio))
        return [select_channels(g, s, share, pruner.min_ratio, pruner.round_to, uniform=pruner.uniform)
                for g, s, share in zip(graphs, scores, shares)]

    if pruner.target is None:
        return select(pruner.ratio)
    return _select_for_macs(graphs, parts, parse_target(pruner.target), select)


def _shares_of_global_cut(graphs: list[ChannelGraph], scores: list[np.ndarray], ratio: float) -> list[float]:
    """For each part, the ratio that makes ``select_channels`` cut exactly the part's
    classes among the ``floor(ratio * N)`` lowest-scored of all N prunable classes."""
    candidates = [np.flatnonzero(~g.class_frozen) for g in graphs]
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(candidates)])
    order = np.concatenate([np.arange(len(c)) for c in candidates])  # tie-break after the part
    every = np.concatenate([s[c] for s, c in zip(scores, candidates)])
    n_prune = math.floor(ratio * len(every) + 1e-9)
    cut = owner[np.lexsort((order, owner, every))[:n_prune]]
    counts = np.bincount(cut, minlength=len(graphs))
    # select_channels cuts floor(share * size + 1e-9) classes; a share must stay below 1
    return [min(int(n) / len(c), _BELOW_ONE) if len(c) else 0.0 for n, c in zip(counts, candidates)]


_BELOW_ONE = math.nextafter(1.0, 0.0)


def _select_for_macs(graphs: list[ChannelGraph], parts: list[TraceablePart], fraction: float,
                     select: Callable[[float], list[np.ndarray]]) -> list[np.ndarray]:
    """Bisection on the global channel ratio until the parts' MACs reach ``fraction``
    (``selection.select_for_target`` for several graphs)."""
    models = [CostModel(g) for g in graphs]
    weights = [sum(args[0].shape[0] if args[0].dim() else 1 for args in p.calls) for p in parts]

    def macs(keeps: list[np.ndarray]) -> float:
        return sum(w * m.macs(k) for m, w, k in zip(models, weights, keeps))

    goal = fraction * sum(w * m.total for m, w in zip(models, weights))
    lo, hi = 0.0, 0.999
    best = select(hi)
    if macs(best) > goal:
        return best  # the floors keep more than the budget; closest we can get
    for _ in range(20):
        mid = (lo + hi) / 2
        keeps = select(mid)
        if macs(keeps) <= goal:
            hi, best = mid, keeps
        else:
            lo = mid
    return best


def _first_failed_call(result: Any, calls: list[tuple]) -> str:
    """The oracle's complaint on the first call where the slim part disagrees, or ""."""
    for args in calls:
        try:
            check = verify_equivalence(result.graph, result.keep, result.model, args)
        except Exception as exc:  # noqa: BLE001 - the dense graph or the slim part does not run on it
            return f"a call with inputs {[tuple(a.shape) for a in args]} raised {type(exc).__name__}"
        if not check.passed:
            return check.detail
    return ""


def _calls_macs(gm: nn.Module, calls: list[tuple]) -> int:
    """MACs of every call of a part, whole batch (``macs_report`` counts per example of
    the part's own first input dim, which is not the model's batch: 150 boxes, say)."""
    total = 0
    for args in calls:
        batch = args[0].shape[0] if args[0].dim() else 1
        total += macs_report(gm, args).macs * max(1, batch)
    return total


def merge_plans(parts: list[PrunedPart], settings: dict[str, Any], summary: dict[str, Any]) -> PrunePlan:
    """One plan for the whole model: the parts' plans with their keys prefixed."""
    modules: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for part in parts:
        q = part.qualname
        plan = part.result.plan
        modules.update({_join(q, owner): attrs for owner, attrs in plan.modules.items()})
        parameters.update({_join(q, owner): entry for owner, entry in plan.parameters.items()})
        for group in plan.groups:
            groups.append({**group, "part": q, "members": [_join(q, m) for m in group["members"]]})
    return PrunePlan(modules, parameters, groups, {**settings, "parts": [p.qualname for p in parts]}, summary)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


def sub_plan(plan: PrunePlan, qualname: str) -> PrunePlan:
    """The entries of ``plan`` that belong to part ``qualname``, with its prefix removed."""
    def strip(table: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in table.items():
            if key == qualname:
                out[""] = value
            elif key.startswith(qualname + "."):
                out[key[len(qualname) + 1:]] = value
        return out

    settings = {k: v for k, v in plan.settings.items() if k != "parts"}
    return PrunePlan(strip(plan.modules), strip(plan.parameters), [], settings, {})


def apply_parts(model: nn.Module, plan: PrunePlan, example_inputs: Any, apply_part: ApplyPart,
                leaf_modules: Iterable = ()) -> nn.Module:
    """Replay a part-by-part plan on a fresh instance: a copy of ``model`` with each
    listed part replaced by its slim GraphModule."""
    inputs = as_input_tuple(example_inputs)
    names = plan.settings.get("parts") or []
    calls = capture_module_inputs(model, inputs)
    replacements = {}
    for qualname in names:
        recorded = calls.get(qualname)
        if not recorded or recorded[0] is None:
            raise PlanError(f"plan prunes part '{qualname}', which this model's forward does not call "
                            "with positional tensors")
        replacements[qualname] = apply_part(model.get_submodule(qualname), sub_plan(plan, qualname),
                                            recorded[0], _inner_leaves(leaf_modules, qualname))
    return _replace_parts(model, replacements)


__all__ = [
    "PartPruner",
    "PartialPruneResult",
    "PartsReport",
    "PrunedPart",
    "apply_parts",
    "inspect_parts",
    "merge_plans",
    "needs_descent",
    "prune_parts",
    "select_across_parts",
    "sub_plan",
]
