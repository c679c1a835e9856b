"""Prune to a measured latency: ``prune_to_latency(model, x, latency=0.3)``.

1. Analyse and score the model once (``fxprune.api.analyze``, the chosen scorer).
2. Build or load its ``LatencyTable`` (``fxprune.deploy.latency_table``): per-layer
   latency vs kept width on the real runtime, blocks discovered from measurement.
3. Calibrate a ``LatencyModel`` (``fxprune.deploy.latency_model``) on one timing of the
   dense model: what the table misses (the work between layers, proportional to the
   activations, and the per-run overhead) is modelled, so the first prediction of a
   slim model's latency is close to what it measures.
4. Select under the budget with ``LatencySelector`` (score lost per millisecond saved,
   the milliseconds including the activations' share). ``objective="capacity"`` makes
   the score a channel's MACs weighted by its score relative to its group
   (``latency_selection.capacity_scores``): more MACs at the same latency.
5. Slim, export, and time the real slim model against the dense one (interleaved, at the
   example inputs' batch size, ``threads`` = torch's thread count unless given). If the
   measured fraction is more than ``tolerance`` (10%) away from the target, correct the
   budget (first step proportional, then the secant through the last two attempts, in
   log space) and go again, at most ``max_iterations`` times. The attempt closest to the
   target is returned.

Layer tables are timed single-threaded by default (``table_threads=1``): on a machine
whose cores are shared with other work, a two-thread timing of one small layer flips
between parallel and serial speed (0.50 vs 0.99 ms for the same conv, from one session
to the next), which hides the blocks. The table only has to rank widths and layers; the
slim model itself is always timed at ``threads``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fxprune import defaults
from fxprune.api import PruneConfig, PruneResult, analyze
from fxprune.cost import macs_report
from fxprune.errors import ConfigError
from fxprune.plan import make_plan
from fxprune.scoring import class_scores, get_scorer
from fxprune.surgery import slim
from fxprune.trace import as_input_tuple

from .export import export_onnx
from .latency_model import LatencyModel, profile_shares
from .latency_selection import OBJECTIVES, LatencySelector, capacity_scores
from .latency_table import build_latency_table, layer_specs
from .profiling import Progress, Timing, profile_many

# measures a slim GraphModule -> slim latency / dense latency; may also have
# ``calibrate() -> LatencyModel.calibrate keywords`` (the ONNX Runtime one profiles dense)
Measure = Callable[[Any], float]


@dataclass(frozen=True)
class LatencyTarget:
    """``latency=0.3``: the slim model's measured latency is 30% of the dense model's."""

    latency: float
    tolerance: float = 0.10
    provider: str = "cpu"
    threads: int | None = None  # None: torch.get_num_threads()
    table_threads: int = 1
    max_iterations: int = 5
    timing_seconds: float = 20.0  # at most this long per dense-vs-slim timing
    cache_dir: str | None = None  # None: ~/.cache/fxprune/latency (FXPRUNE_CACHE)
    objective: str = "score"  # what the budget maximises: "score" or "capacity" (module doc)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown latency objective {self.objective!r}; choose one of "
                              f"{', '.join(OBJECTIVES)}")
        if not 0.0 < self.latency <= 1.0:
            raise ConfigError(f"latency target must be a fraction in (0, 1], got {self.latency!r}")
        if not 0.0 < self.tolerance < 1.0:
            raise ConfigError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
        if self.max_iterations < 1:
            raise ConfigError(f"max_iterations must be >= 1, got {self.max_iterations!r}")

    @classmethod
    def parse(cls, text: str, **options) -> LatencyTarget:
        key, _, value = str(text).partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if key.strip().lower() != "latency" or not 0.0 < fraction <= 1.0:
            raise ConfigError(f"target must look like 'latency=0.3' (a fraction in (0, 1]), got {text!r}")
        return cls(fraction, **options)

    def describe(self) -> str:
        return f"latency={self.latency:g}"

    def select(self, graph, scores, example_inputs, min_ratio: float, round_to: int | None) -> np.ndarray:
        """The budget-object hook of ``fxprune.prune(target=...)``: measure, select,
        correct (see the module docstring) and return the keep mask closest to the target."""
        inputs = as_input_tuple(example_inputs)
        steps, keeps, _, _ = search(graph, inputs, np.asarray(scores, dtype=np.float64), self,
                                    min_ratio=min_ratio, round_to=round_to)  # fmt: skip
        return keeps[closest(steps, self.latency)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStep:
    """One attempt of the correction loop."""

    budget: float  # the fraction of the modelled dense latency asked of the selection
    predicted: float  # the latency model's predicted slim / dense for the chosen widths
    measured: float  # slim / dense, measured on the real models
    macs: int
    channels: int


@dataclass
class LatencyResult:
    """The pruned model (``result``, a ``PruneResult``) and how its latency was reached."""

    result: PruneResult
    target: LatencyTarget
    measured: float  # slim / dense latency of ``result.model``
    steps: list[LatencyStep]
    table_seconds: float
    table_cached: bool
    blocks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)  # LatencyModel.to_dict() at the end

    @property
    def model(self):
        return self.result.model

    @property
    def within_tolerance(self) -> bool:
        return abs(self.measured / self.target.latency - 1.0) <= self.target.tolerance

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target.describe(),
            "objective": self.target.objective,
            "measured": round(self.measured, 4),
            "within_tolerance": self.within_tolerance,
            "iterations": len(self.steps),
            "table_seconds": round(self.table_seconds, 1),
            "table_cached": self.table_cached,
            "blocks": self.blocks,
            "predicted_first": round(self.steps[0].predicted, 4) if self.steps else None,
            "measured_first": round(self.steps[0].measured, 4) if self.steps else None,
            "calibration": self.calibration,
            **self.result.summary(),
        }

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        steps = Table(title=f"Latency target {self.target.describe()} (±{self.target.tolerance:.0%}, "
                            f"objective {self.target.objective})",
                      title_justify="left")  # fmt: skip
        for header in ("Attempt", "Budget", "Predicted", "Measured", "MACs", "Channels"):
            steps.add_column(header, justify="right")
        for n, step in enumerate(self.steps, 1):
            steps.add_row(str(n), f"{step.budget:.3f}", f"{step.predicted:.3f}", f"{step.measured:.3f}",
                          f"{step.macs:,}", f"{step.channels:,}")  # fmt: skip
        table_note = "cache hit" if self.table_cached else f"built in {self.table_seconds:.0f} s"
        verdict = "within" if self.within_tolerance else "NOT within"
        return Group(self.result, steps, Text(
            f"measured {self.measured:.3f} of dense ({verdict} ±{self.target.tolerance:.0%} of "
            f"{self.target.latency:g}); latency table {table_note}; blocks "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.blocks.items()))))  # fmt: skip


def prune_to_latency(
    model,
    example_inputs,
    latency: float | str | LatencyTarget = 0.3,
    *,
    scorer: Any = defaults.SCORER,
    min_ratio: float = defaults.MIN_RATIO,
    round_to: int | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    tolerance: float = 0.10,
    max_iterations: int = 5,
    objective: str = "score",
    table_threads: int = 1,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    leaf_modules=(),
    data: Any = None,
    measure: Measure | None = None,
    layer_timer: Callable[..., float] | None = None,
    progress: Progress | None = None,
) -> LatencyResult:
    """Prune ``model`` until its measured latency is ``latency`` x dense (see module doc).

    ``objective``: ``"score"`` keeps the most score under the budget, ``"capacity"`` the
    most MACs (each channel weighted by its score relative to its group). A
    ``LatencyTarget`` passed as ``latency`` brings its own options.
    ``measure(slim_model) -> fraction`` and ``layer_timer`` replace the real timings
    (tests); ``progress`` receives one line per step.
    """

    started = time.perf_counter()
    if isinstance(latency, LatencyTarget):  # its own options, but a ``threads`` given here counts
        target = latency if threads is None or latency.threads is not None else replace(
            latency, threads=threads)
    else:
        options = {"tolerance": tolerance, "provider": provider, "threads": threads,
                   "table_threads": table_threads, "max_iterations": max_iterations,
                   "objective": objective}
        target = (LatencyTarget.parse(latency, **options) if isinstance(latency, str)
                  else LatencyTarget(float(latency), **options))  # fmt: skip
    say = progress or (lambda message: None)
    inputs = as_input_tuple(example_inputs)
    PruneConfig(0.0, min_ratio)  # validates min_ratio like prune() does
    say(f"analysing {type(model).__name__}")
    graph = analyze(model, inputs, leaf_modules, copy_model=False)
    # scored on every example given (the batch): a data-dependent scorer sees them all
    scores = _scores(graph, inputs, scorer, data)
    if cache_dir is not None:
        target = replace(target, cache_dir=str(cache_dir))
    steps, keeps, table, latency_model = search(graph, inputs, scores, target, min_ratio=min_ratio,
                                                round_to=round_to, use_cache=use_cache, measure=measure,
                                                layer_timer=layer_timer, model_name=type(model).__name__,
                                                progress=progress)  # fmt: skip
    best = closest(steps, target.latency)
    result = _result(graph, keeps[best], inputs, scorer, min_ratio, round_to, target, steps[best])
    return LatencyResult(result, target, steps[best].measured, steps, table.seconds, table.cached,
                         dict(table.blocks), time.perf_counter() - started, latency_model.to_dict())  # fmt: skip


def search(graph, inputs, scores, target: LatencyTarget, *, min_ratio: float, round_to: int | None,
           use_cache: bool = True, measure: Measure | None = None, layer_timer=None,
           model_name: str | None = None, progress: Progress | None = None):  # fmt: skip
    """Table, calibration, selection and correction loop: (attempts, their keep masks,
    the table, the calibrated latency model)."""
    import torch

    threads = target.threads or torch.get_num_threads()
    say = progress or (lambda message: None)
    if target.objective == "capacity":
        scores = capacity_scores(graph, scores)
    specs = layer_specs(graph.gm, inputs)
    table = build_latency_table(specs, model_name=model_name or type(graph.gm).__name__,
                                provider=target.provider, threads=target.table_threads,
                                cache_dir=target.cache_dir, use_cache=use_cache, timer=layer_timer,
                                progress=progress)  # fmt: skip
    selector = LatencySelector(graph, specs, scores, table, min_ratio, round_to)
    with tempfile.TemporaryDirectory(prefix="fxprune-latency-") as workdir:
        measure = measure or _OnnxMeasure(graph.gm, inputs, target, threads, Path(workdir), progress)
        table_dense, acts_dense = selector.features(selector.dense_widths())
        measured = measure.calibrate() if hasattr(measure, "calibrate") else {}
        model = LatencyModel.calibrate(table_dense, acts_dense, **measured)
        if model.calibrated:
            say(f"latency model: dense {model.dense_ms:.2f} ms measured, {table_dense:.2f} ms in the layer "
                f"table; model: table x{model.scale:.2f} + {model.act_ms:.4f} ms per M activations "
                f"({acts_dense:.1f} M) + {model.overhead:.3f} ms per run")  # fmt: skip
        steps, keeps = _correct(selector, graph, inputs, target, measure, say, model)
    return steps, keeps, table, model


def closest(steps: list[LatencyStep], goal: float) -> int:
    """Index of the attempt whose measured latency is closest to the goal."""
    return min(range(len(steps)), key=lambda n: abs(steps[n].measured / goal - 1.0))


def _correct(selector: LatencySelector, graph, inputs, target: LatencyTarget, measure: Measure, say,
             model: LatencyModel):  # fmt: skip
    """The +-tolerance loop: select at the budget the calibrated model predicts hits the
    target, measure, and on a miss correct the budget (see ``_next_budget``)."""
    steps: list[LatencyStep] = []
    keeps: list[np.ndarray] = []
    selector.set_costs(model.scale, model.act_ms)
    budget = model.selector_budget(target.latency)
    for attempt in range(1, target.max_iterations + 1):
        keep, _ = selector.select(budget)
        for _ in range(12):  # a budget step too small to change the selection: keep moving
            same = next((n for n, k in enumerate(keeps) if np.array_equal(keep, k)), None)
            if same is None:
                break
            factor = target.latency / max(steps[same].measured, 1e-6)
            budget = float(min(1.0, max(1e-3, budget * (factor if abs(factor - 1) > 0.02 else 0.98))))
            keep, _ = selector.select(budget)
        if any(np.array_equal(keep, k) for k in keeps):
            say(f"attempt {attempt}: no budget selects a model not yet measured; stopping")
            break
        predicted = model.fraction(*selector.features(selector.last_widths))
        slim_model = slim(graph, keep)
        measured = float(measure(slim_model))
        macs = int(macs_report(slim_model, inputs).macs)
        steps.append(LatencyStep(budget, predicted, measured, macs, int(keep.sum())))
        keeps.append(keep)
        say(f"attempt {attempt}: budget {budget:.3f}, predicted {predicted:.3f} -> measured "
            f"{measured:.3f} of dense, target {target.latency:g} ±{target.tolerance:.0%}")  # fmt: skip
        if abs(measured / target.latency - 1.0) <= target.tolerance:
            break
        budget = _next_budget(steps, target.latency)
    return steps, keeps


def _next_budget(steps: list[LatencyStep], goal: float) -> float:
    """Proportional on the first miss, then the secant through the last two attempts (in
    log space), kept within a factor 2 of the last budget and within (0, 1]. (A refit of
    the model's two terms on the misses was tried: when slim models run relatively slower
    than any split of table and activations explains, as resnet50 did under load 20,
    0.40 predicted -> 0.67 measured, it moved the budget too little: 0.67, 0.57, 0.54, 0.52.)"""
    last = steps[-1]
    proposal = last.budget * goal / max(last.measured, 1e-6)
    if len(steps) >= 2:
        prev = steps[-2]
        dx = math.log(last.budget) - math.log(prev.budget)
        dy = math.log(max(last.measured, 1e-6)) - math.log(max(prev.measured, 1e-6))
        if abs(dx) > 1e-6 and dy / dx > 0.05:  # a usable, increasing slope
            proposal = math.exp(math.log(last.budget) + (math.log(goal) - math.log(max(last.measured, 1e-6))) * dx / dy)
    return float(min(1.0, max(1e-3, min(2 * last.budget, max(last.budget / 2, proposal)))))


class _OnnxMeasure:
    """Exports dense once; ``calibrate()`` profiles it, each call exports the slim model
    and times both interleaved."""

    def __init__(self, dense_gm, inputs, target: LatencyTarget, threads: int, workdir: Path, progress):
        self.inputs, self.target, self.threads, self.workdir, self.progress = inputs, target, threads, workdir, progress
        self.dense_path = workdir / "dense.onnx"
        export_onnx(dense_gm, inputs, self.dense_path, check_parity=False)
        self.batch = int(inputs[0].shape[0]) if inputs[0].dim() else 1
        self.timing = Timing(warmup=2, min_runs=10, min_seconds=1.0, max_seconds=target.timing_seconds)

    def calibrate(self) -> dict[str, float]:
        """The dense model profiled node by node (5 runs): its time and the shares of it
        in conv/linear kernels, other kernels and outside kernels."""
        from .layer_profile import op_breakdown
        from .runtime import CPU, resolve_providers

        if resolve_providers(self.target.provider)[0] != CPU:  # the node profile is read for CPU only
            stats = profile_many({"dense": self.dense_path}, (self.batch,), threads=self.threads,
                                 provider=self.target.provider, timing=self.timing, progress=self.progress)  # fmt: skip
            return {"dense_ms": stats["dense"][0].median_ms}
        say = self.progress or (lambda message: None)
        say("latency model: profiling the dense model (5 runs)")
        return profile_shares(op_breakdown(self.dense_path, self.batch, self.threads, 5, self.workdir))

    def __call__(self, slim_model) -> float:
        slim_path = self.workdir / "slim.onnx"
        export_onnx(slim_model, self.inputs, slim_path)
        stats = profile_many({"dense": self.dense_path, "slim": slim_path}, (self.batch,), threads=self.threads,
                             provider=self.target.provider, timing=self.timing, progress=self.progress)  # fmt: skip
        return stats["slim"][0].median_ms / stats["dense"][0].median_ms


def _scores(graph, inputs, scorer, data) -> np.ndarray:
    score_fn = get_scorer(scorer)
    if getattr(score_fn, "needs_data", False) and data is None:
        raise ConfigError(f"scorer '{getattr(score_fn, 'name', scorer)}' needs a data batch: pass data=(inputs, targets)")
    raw = score_fn(graph, inputs, data)
    if getattr(score_fn, "class_level", False):
        return np.asarray(raw, dtype=np.float64)
    return class_scores(graph, raw)


def _result(graph, keep, inputs, scorer, min_ratio, round_to, target: LatencyTarget, step: LatencyStep) -> PruneResult:
    started = time.perf_counter()
    slim_gm = slim(graph, keep)
    before, after = macs_report(graph.gm, inputs), macs_report(slim_gm, inputs)
    scorer_name = scorer if isinstance(scorer, str) else getattr(scorer, "name", "custom")
    config = PruneConfig(0.0, min_ratio, scorer_name, round_to, target.describe())
    result = PruneResult(slim_gm, None, graph, keep, before.params, after.params,  # type: ignore[arg-type]
                         before.macs, after.macs, {"slim": time.perf_counter() - started})
    settings = {**config.to_dict(), "latency": {**target.to_dict(), "measured": step.measured}}
    result.plan = make_plan(graph, keep, settings, result.summary())
    return result


__all__ = ["LatencyResult", "LatencyStep", "LatencyTarget", "prune_to_latency"]
