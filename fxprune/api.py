"""Public entry points: ``analyze``, ``prune``, ``apply_plan``, ``save_slim``/``load_slim``."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from . import defaults, io
from .analysis import ChannelGraph
from .blockers import describe_blockers
from .composed import ComposedGraph, analyze_slim, check_both_target, split_budget
from .cost import SizeChange, macs_report
from .errors import ConfigError, PlanError
from .ops import build_channel_graph
from .ops.attention import check_heads
from .ops.heads import heads_kept
from .partial import PartialPruneResult, PartPruner, apply_parts, needs_descent, prune_parts
from .plan import PrunePlan, keep_from_plan, make_plan
from .scoring import class_scores, get_scorer
from .selection import check_ratios, parse_target, select_channels, select_for_target
from .surgery import slim
from .trace import UntraceableRoot, as_input_tuple, propagate_shapes, trace_model
from .verify import oracle_masks


@dataclass(frozen=True)
class PruneConfig:
    """Settings of one pruning run; round-trips through ``to_dict``/``from_dict``."""

    ratio: float = defaults.RATIO
    min_ratio: float = defaults.MIN_RATIO
    scorer: str = defaults.SCORER
    round_to: int | None = None
    target: str | None = None  # "flops=0.3": keep 30% of MACs; or a target object's describe()
    heads: str = "dims"  # attention heads cut per head dim ("dims"), whole ("whole") or both ("both")
    uniform: bool = False  # prune every group by `ratio` instead of one global ranking

    def __post_init__(self):
        check_ratios(self.ratio, self.min_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        keys = ("ratio", "min_ratio", "scorer", "round_to", "target", "heads", "uniform")
        known = {k: d[k] for k in keys if k in d}
        return cls(**known)


@dataclass
class PruneResult(SizeChange):
    """``model`` is the new slim GraphModule; ``graph`` is the analysis of the dense model
    (its ``gm`` shares the dense model's modules: read it, don't train it)."""

    model: fx.GraphModule
    plan: PrunePlan
    graph: ChannelGraph
    keep: np.ndarray
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = {
            **self.size_summary(),
            "channels_before": int(self.graph.num_classes),
            "channels_after": int(self.keep.sum()),
        }
        heads = self.heads()
        if heads:
            out["attention"] = heads
        return out

    def heads(self) -> list[dict[str, Any]]:
        """Heads and head dim of every attention block, before and after."""
        return heads_kept(self.graph, oracle_masks(self.graph, self.keep).atoms)

    def __rich__(self):
        t = self.size_table("fxprune result")
        t.add_row("channels", f"{self.graph.num_classes:,}", f"{int(self.keep.sum()):,}",
                  f"{self.graph.num_classes / max(1, int(self.keep.sum())):.2f}x")
        heads = self.heads()
        if heads:
            before = sum(h["heads_before"] for h in heads)
            after = sum(h["heads_after"] for h in heads)
            t.add_row(f"attention heads ({len(heads)} blocks)", f"{before:,}", f"{after:,}",
                      f"{before / max(1, after):.2f}x")
            dims_before = sorted({h["head_dim_before"] for h in heads})
            dims_after = sorted({d for h in heads for d in h["head_dims_after"]})
            t.add_row("head dims (q/k, v)", "/".join(map(str, dims_before)),
                      "/".join(map(str, dims_after)), "")
        return t


def analyze(model: nn.Module, example_inputs: Any, leaf_modules: Iterable = (),
            copy_model: bool = True, heads: str = "dims") -> ChannelGraph:
    """Trace ``model`` and build its channel-dependency graph (``graph.gm`` owns a copy
    of the model unless ``copy_model=False``, see ``trace_model``). ``heads``: attention
    heads are cut per head dim (``"dims"``), as whole heads (``"whole"``), or both
    (``"both"``: a ``fxprune.composed.ComposedGraph`` refining the two analyses)."""
    if check_heads(heads) == "both":
        whole = analyze(model, example_inputs, leaf_modules, copy_model, "whole")
        dims = analyze(model, example_inputs, leaf_modules, copy_model=False, heads="dims")
        return ComposedGraph.build(whole, dims, as_input_tuple(example_inputs))
    gm = trace_model(model, example_inputs, leaf_modules, copy_model=copy_model)
    return build_channel_graph(gm, {"heads": heads})


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float = defaults.RATIO,
    min_ratio: float = defaults.MIN_RATIO,
    scorer: Any = defaults.SCORER,
    *,
    round_to: int | None = None,
    target: Any = None,
    leaf_modules: Iterable = (),
    data: Any = None,
    graph: ChannelGraph | None = None,
    heads: str = "dims",
    uniform: bool = False,
) -> PruneResult:
    """Score, select and slim. ``model`` is never modified; the result holds a new,
    physically smaller GraphModule in ``.model`` and the ``PrunePlan`` in ``.plan``.

    ``ratio`` prunes that fraction of all prunable channels (global ranking);
    ``min_ratio`` keeps at least that fraction of every group; ``scorer`` is a name
    from ``fxprune.scoring.SCORERS`` or a callable following the ``Scorer`` protocol;
    ``data`` is a batch ``(inputs, targets)`` for data-driven scorers (``snip``).
    ``target`` replaces ``ratio`` by a budget: ``"flops=0.3"`` (keep 30% of the MACs), or
    an object with ``select(graph, scores, example_inputs, min_ratio, round_to) -> keep``
    and ``describe() -> str`` (recorded in the plan), such as a latency target.
    ``heads="whole"`` prunes whole attention heads instead of head dims, ``heads="both"``
    whole heads and then head dims (two passes, each removing ``1 - sqrt(1 - ratio)``,
    composed into one result and plan: ``fxprune.composed``); ``uniform``
    prunes ``ratio`` of every group (Torch-Pruning's default) instead of ranking globally.

    Submodules that torch.fx cannot trace become leaves (kept whole, listed by
    ``fxprune.trace.leaves_of(result.graph.gm)``). When the model's own ``forward`` does
    not trace (a detector), or when it traces but every prunable layer sits inside such
    leaves (timm's NesT levels), its traceable submodules are scored, ranked together and
    pruned, and a ``fxprune.partial.PartialPruneResult`` is returned (see that module).
    When nothing can be pruned, a warning names what blocks it.
    """
    if isinstance(graph, ComposedGraph):  # analyze(..., heads="both") was given
        heads = "both"
    scorer_name = scorer if isinstance(scorer, str) else getattr(scorer, "name", "custom")
    target_text = target if target is None or isinstance(target, str) else target.describe()
    config = PruneConfig(ratio, min_ratio, scorer_name, round_to, target_text, heads, uniform)
    inputs = as_input_tuple(example_inputs)
    if check_heads(heads) == "both":
        return _prune_both(model, inputs, config, scorer, target, leaf_modules, data, graph)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if graph is None:  # read-only analysis: slim() and the scorers copy before writing
        try:
            graph = analyze(model, inputs, leaf_modules, copy_model=False, heads=heads)
        except UntraceableRoot as root_error:  # e.g. a detector: the parts that trace, ranked together
            return _prune_by_parts(model, inputs, config, scorer, target, leaf_modules, root_error)
        if needs_descent(graph):  # every prunable layer sits in containers that do not trace
            try:
                return _prune_by_parts(model, inputs, config, scorer, target, leaf_modules, None)
            except UntraceableRoot:
                pass  # nothing inside them prunes either: the warning below names the blockers
    times["analyze"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _class_scores(graph, inputs, scorer, data)
    times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if isinstance(target, str):
        keep = select_for_target(graph, scores, inputs, target, min_ratio, round_to)
    elif target is not None:  # a budget object, e.g. fxprune.deploy's latency target
        keep = target.select(graph, scores, inputs, min_ratio, round_to)
    else:
        keep = select_channels(graph, scores, ratio, min_ratio, round_to, uniform=uniform)
    if keep.all() and (ratio > 0 or target is not None):  # an answer, not a success
        warnings.warn(f"fxprune: {describe_blockers(graph)}", stacklevel=2)
    times["slim"] = time.perf_counter() - t0
    return _finish(graph, keep, inputs, config, times)


def _prune_by_parts(model: nn.Module, inputs: tuple, config: PruneConfig, scorer: Any, target: Any,
                    leaf_modules: Iterable, root_error: UntraceableRoot | None) -> PartialPruneResult:
    """The traceable parts of ``model`` pruned under one ranking (``fxprune.partial``)."""
    def score_part(part_graph: ChannelGraph, part_inputs: tuple) -> np.ndarray:
        return _class_scores(part_graph, part_inputs, scorer, None)

    def finish_part(part_graph: ChannelGraph, keep: np.ndarray, part_inputs: tuple) -> PruneResult:
        return _finish(part_graph, keep, part_inputs, config, {})

    pruner = PartPruner(score_part, finish_part, config.ratio, config.min_ratio, config.round_to,
                        config.uniform, target)
    return prune_parts(model, inputs, pruner, leaf_modules, root_error, config.to_dict(),
                       {"heads": check_heads(config.heads)})


def _class_scores(graph: ChannelGraph, inputs: tuple, scorer: Any, data: Any) -> np.ndarray:
    """One score per channel class of ``graph`` (``scorer``: a name or a ``Scorer``)."""
    score_fn = get_scorer(scorer)
    if getattr(score_fn, "needs_data", False) and data is None:
        scorer_name = scorer if isinstance(scorer, str) else getattr(scorer, "name", "custom")
        raise ConfigError(f"scorer '{scorer_name}' needs a data batch: pass data=(inputs, targets)")
    raw = score_fn(graph, inputs, data)
    if getattr(score_fn, "class_level", False):  # optional for user scorers
        return np.asarray(raw, dtype=np.float64)
    return class_scores(graph, raw)


def _finish(graph: ChannelGraph, keep: np.ndarray, inputs: tuple, config: PruneConfig,
            times: dict[str, float]) -> PruneResult:
    """Slim ``graph`` to ``keep``, count it and write its plan."""
    t0 = time.perf_counter()
    slim_gm = slim(graph, keep)
    times["slim"] = times.get("slim", 0.0) + time.perf_counter() - t0
    before = macs_report(graph.gm, inputs)
    after = macs_report(slim_gm, inputs)
    result = PruneResult(slim_gm, None, graph, keep, before.params, after.params,  # type: ignore[arg-type]
                         before.macs, after.macs, times)
    result.plan = make_plan(graph, keep, config.to_dict(), result.summary())
    return result


def _prune_both(model: nn.Module, inputs: tuple, config: PruneConfig, scorer: Any, target: Any,
                leaf_modules: Iterable, data: Any, graph: ChannelGraph | None) -> PruneResult:
    """``heads="both"``: whole heads on the dense model, then head dims on that slim model,
    composed into one result over the dense model (see ``fxprune.composed``)."""
    check_both_target(target)
    if not isinstance(graph, ComposedGraph):
        try:
            graph = analyze(model, inputs, leaf_modules, copy_model=False, heads="both")
        except UntraceableRoot as exc:
            raise ConfigError(f"heads='both' needs a model whose forward traces ({exc}); "
                              "use heads='whole' or heads='dims'") from exc
    ratio, min_ratio = split_budget(config.ratio, config.min_ratio)
    macs_goal = parse_target(target) if target is not None else None
    first = prune(model, inputs, ratio, min_ratio, scorer, data=data, graph=graph.whole,
                  heads="whole", uniform=config.uniform,
                  target=None if macs_goal is None else f"flops={macs_goal ** 0.5:.6g}")
    stage_two = analyze_slim(first.model, inputs, "dims")
    if macs_goal is not None:  # what is left of the MAC budget, relative to stage one
        rest = min(1.0, macs_goal * first.macs_before / max(1, first.macs_after))
    second = prune(first.model, inputs, ratio, min_ratio, scorer, data=data, graph=stage_two,
                   heads="dims", uniform=config.uniform, round_to=config.round_to,
                   target=None if macs_goal is None else f"flops={rest:.6g}")
    keep = graph.compose(first.keep, stage_two, second.keep)
    times = {k: first.seconds.get(k, 0.0) + second.seconds.get(k, 0.0)
             for k in {**first.seconds, **second.seconds}}
    result = PruneResult(second.model, None, graph, keep, first.params_before,  # type: ignore[arg-type]
                         second.params_after, first.macs_before, second.macs_after, times)
    result.plan = make_plan(graph, keep, config.to_dict(), result.summary())
    return result


def apply_plan(model: nn.Module, plan: PrunePlan | dict | str | os.PathLike, example_inputs: Any,
               leaf_modules: Iterable = ()) -> fx.GraphModule:
    """Re-apply a plan (object, dict, or path to ``plan.json``) to a fresh instance of the
    same architecture; returns the slim GraphModule (for a plan made part by part, a copy
    of ``model`` with those parts replaced by slim GraphModules)."""
    if isinstance(plan, dict):
        plan = PrunePlan.from_dict(plan)
    elif not isinstance(plan, PrunePlan):
        plan = PrunePlan.load(plan)
    if plan.settings.get("parts"):  # pruned part by part (untraceable root): replay each part
        def apply_part(part: nn.Module, part_plan: PrunePlan, part_inputs: tuple, leaves: list) -> nn.Module:
            return apply_plan(part, part_plan, part_inputs, leaves)

        return apply_parts(model, plan, example_inputs, apply_part, leaf_modules)
    if plan.settings.get("heads") == "both":  # two composed passes: replay both stages
        graph = analyze(model, example_inputs, leaf_modules, heads="both")
        return graph.slim(keep_from_plan(graph, plan))
    removed = plan.settings.get("removed_sections") or []
    if removed:  # a train-prune plan: drop the removed residual sections first
        from .sections import find_sections, remove_sections

        gm = trace_model(model, example_inputs, leaf_modules)
        wanted = {entry["add"] for entry in removed}
        sections = [s for s in find_sections(gm) if s.key in wanted]
        if len(sections) != len(wanted):
            missing = wanted - {s.key for s in sections}
            raise PlanError(f"plan removes residual sections this model does not have: {sorted(missing)}")
        remove_sections(gm, sections)
        propagate_shapes(gm, as_input_tuple(example_inputs))
        graph = build_channel_graph(gm, {"heads": plan.settings.get("heads", "dims")})
    else:
        graph = analyze(model, example_inputs, leaf_modules, heads=plan.settings.get("heads", "dims"))
    keep = keep_from_plan(graph, plan)
    return slim(graph, keep)


SLIM_FILE = io.SLIM_FILE
META_FILE = io.META_FILE


def save_slim(model: fx.GraphModule, directory: str | os.PathLike, example_inputs: Any,
              extra: dict[str, Any] | None = None) -> None:
    """Write ``slim.pt`` (the pickled GraphModule) and ``meta.json`` (each input's shape,
    dtype, integer range and name; the output structure) into ``directory``."""
    io.write_slim(directory, model, example_inputs, extra)


def load_slim(directory: str | os.PathLike) -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Load a slim model written by ``fxprune prune --out DIR``: ``(model, example_inputs)``,
    the inputs rebuilt from ``meta.json`` (same shapes, dtypes, integer ranges).

    The file is a pickled GraphModule: ``torch.load(DIR / "slim.pt", weights_only=False)``
    works with torch alone (no fxprune, no model source) as long as its leaf modules are
    torch classes; custom leaf modules need their source importable.
    """
    model, inputs, _ = io.read_slim(directory)
    return model, inputs


__all__ = ["PruneConfig", "PruneResult", "analyze", "apply_plan", "load_slim", "prune", "save_slim"]
