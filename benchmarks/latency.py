"""Dense vs slim latency in ONNX Runtime (CPU), measured side by side in one run.

For each model (``weights=None``) the dense network is pruned with ``fxprune.prune``
(scorer synflow; CIFAR ResNet-56 / VGG16-BN / MobileNetV2 at ratio 0.85, torchvision
resnet50 / mobilenet_v2 at ratio 0.5; min-ratio 0.15), both are exported with
``fxprune.export.export_onnx`` (parity checked) and timed in onnxruntime with the same
session settings as ``fxprune.profile`` (ORT_ENABLE_ALL, intra-op threads = --threads,
inter-op threads 1).

Timing is *interleaved*: after a warm-up, rounds alternate dense and slim (order
reversed every round), each model running a slot of ~0.3 s per round, until both
``--min-rounds`` rounds and ``--min-seconds`` have passed. Latencies are medians over
every run; speed-up = dense median / slim median; efficiency = speed-up / MACs reduction
(1.0 = latency falls exactly as the MACs do). The "paired" speed-up in the JSON is the
median over rounds of dense-slot / slim-slot medians, which is robust to other
processes loading the CPU for a while.

Batch 64 at 224 px takes ~10 s per dense resnet50 run on 2 cores, so for 224-px models
batch sizes above --imagenet-max-batch (16) are replaced by it; the table says so.

Where the efficiency at a batch is below --explain-below (0.5), both models are profiled
per node with onnxruntime's ``SessionOptions.enable_profiling`` and the time is broken
down by kind of op (NCHWc conv, NCHW-fallback conv, depthwise, layout reorders,
BN/elementwise, ...), with the MACs each kind actually executes (NCHWc pads channel
counts up to the SIMD block) and the per-run overhead outside kernels.

    .venv/bin/python benchmarks/latency.py
    .venv/bin/python benchmarks/latency.py --models resnet56,mobilenetv2 --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GOAL_EFFICIENCY = 0.7
GOAL_BATCH = 64


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "cifar" (fxprune.models) | "torchvision"
    ratio: float
    size: int  # input side in pixels


SPECS: dict[str, ModelSpec] = {
    "resnet56": ModelSpec("resnet56", "cifar", 0.85, 32),
    "vgg16_bn": ModelSpec("vgg16_bn", "cifar", 0.85, 32),
    "mobilenetv2": ModelSpec("mobilenetv2", "cifar", 0.85, 32),
    "resnet50": ModelSpec("resnet50", "torchvision", 0.5, 224),
    "mobilenet_v2": ModelSpec("mobilenet_v2", "torchvision", 0.5, 224),
}
DEFAULT_MODELS = list(SPECS)


def build_model(name: str, seed: int):
    """(dense model in eval mode, 1-example input) for a name in SPECS."""
    import torch

    spec = SPECS[name]
    torch.manual_seed(seed)
    if spec.source == "cifar":
        from fxprune.models import create_model

        model = create_model(name)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
    return model.eval(), torch.randn(1, 3, spec.size, spec.size)


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_rounds: int = 7
    min_seconds: float = 6.0  # per (model group, batch), all models together
    max_seconds: float = 120.0  # stop after this once 3 rounds are done
    slot_seconds: float = 0.3  # per model per round


FULL = Timing()
QUICK = Timing(warmup=2, min_rounds=3, min_seconds=1.0, max_seconds=20.0, slot_seconds=0.1)


def open_session(
    path, threads: int | None, provider: str = "cpu", profile_prefix: str | None = None
):
    """An onnxruntime session set up exactly as ``fxprune.profile`` does (plus profiling)."""
    import onnxruntime as ort

    from fxprune.profile import resolve_providers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=resolve_providers(provider))


def random_feed(session, batch: int) -> dict[str, Any]:
    import numpy as np

    node = session.get_inputs()[0]
    shape = [batch, *node.shape[1:]]
    return {node.name: np.random.default_rng(0).standard_normal(shape).astype("float32")}


@dataclass
class Interleaved:
    """Per-model run times (ms) and per-round slot medians from ``time_interleaved``."""

    times: dict[str, list[float]]
    slots: dict[str, list[float]]
    rounds: int
    seconds: float

    def stat(self, name: str, batch: int):
        import numpy as np

        from fxprune.profile import LatencyStat

        runs = self.times[name]
        median = statistics.median(runs)
        return LatencyStat(batch=batch, median_ms=median, p90_ms=float(np.percentile(runs, 90)),
                           mean_ms=statistics.fmean(runs), throughput=batch / (median / 1e3),
                           runs=len(runs))  # fmt: skip

    def paired_speedup(self, base: str, other: str) -> float:
        """Median over rounds of base-slot / other-slot: robust to load that comes and goes."""
        return statistics.median(b / o for b, o in zip(self.slots[base], self.slots[other]))


def time_interleaved(sessions: dict[str, Any], feed: dict[str, Any], timing: Timing) -> Interleaved:
    """Time several sessions on one feed in alternating rounds (order rotated each round)."""
    names = list(sessions)
    reps = {}
    for name in names:
        for _ in range(timing.warmup):
            sessions[name].run(None, feed)
        tick = time.perf_counter()
        sessions[name].run(None, feed)
        once = time.perf_counter() - tick
        reps[name] = int(min(500, max(1, timing.slot_seconds // max(once, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in names}
    slots: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while True:
        elapsed = time.perf_counter() - started
        if rounds >= timing.min_rounds and elapsed >= timing.min_seconds:
            break
        if rounds >= 3 and elapsed >= timing.max_seconds:
            break
        shift = rounds % len(names)
        order = names[shift:] + names[:shift]
        if rounds % 2:
            order = order[::-1]
        for name in order:
            slot = []
            for _ in range(reps[name]):
                tick = time.perf_counter()
                sessions[name].run(None, feed)
                slot.append((time.perf_counter() - tick) * 1e3)
            times[name] += slot
            slots[name].append(statistics.median(slot))
        rounds += 1
    return Interleaved(times, slots, rounds, time.perf_counter() - started)


# --------------------------------------------------------------------------- per-op profile


def _conv_kind(args: dict[str, Any]) -> str:
    shapes = args.get("input_type_shape") or []
    weight = next(iter(shapes[1].values())) if len(shapes) > 1 else None
    if not weight or len(weight) < 3:
        return "conv"
    cin_per_group = weight[1]
    kernel = math.prod(weight[2:])
    if cin_per_group == 1 and weight[0] > 1 and kernel > 1:
        return "depthwise"
    return "conv 1x1" if kernel == 1 else "conv kxk"


def _executed_macs(args: dict[str, Any]) -> int:
    """MACs a conv/gemm node really executes, from the shapes ORT ran it at (NCHWc shapes
    include the channel padding up to the SIMD block)."""
    shapes = args.get("input_type_shape") or []
    outs = args.get("output_type_shape") or []
    if len(shapes) < 2 or not outs:
        return 0
    weight = next(iter(shapes[1].values()))
    out = next(iter(outs[0].values()))
    op = args.get("op_name", "")
    if op in ("Conv", "FusedConv"):
        return math.prod(out) * math.prod(weight[1:])
    if op in ("Gemm", "MatMul", "FusedGemm"):
        return math.prod(out) * weight[0 if op != "Gemm" else -1]
    return 0


def op_category(name: str, args: dict[str, Any]) -> str:
    op = args.get("op_name", "?")
    if op in ("Conv", "FusedConv"):
        layout = "NCHWc" if name.endswith("_nchwc_kernel_time") else "NCHW"
        return f"{_conv_kind(args)} ({layout})"
    if op in ("ReorderInput", "ReorderOutput", "Transpose"):
        return "layout reorder"
    if op in ("BatchNormalization", "Add", "Sum", "Relu", "Clip", "Mul", "Sigmoid", "HardSigmoid"):
        return "BN / elementwise"
    if "Pool" in op:
        return "pooling"
    if op in ("Gemm", "MatMul", "FusedGemm"):
        return "gemm (classifier)"
    return op


@dataclass
class OpBreakdown:
    run_ms: float  # median model_run time of the profiled runs
    kernel_ms: float  # sum over nodes of each node's median kernel time
    gap_ms: float  # median over runs of (run time - that run's kernel times)
    nodes: int  # kernel launches per run
    by_category: dict[str, dict[str, float]]  # category -> {ms, macs executed, nodes} per run
    top_nodes: list[tuple[str, str, float]]  # (node, category, ms per run), slowest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def op_breakdown(path, batch: int, threads: int | None, runs: int, workdir: Path) -> OpBreakdown:
    """Per-node profile of ``path`` at ``batch``: ``runs`` profiled runs after 1 skipped."""
    session = open_session(
        path, threads, profile_prefix=str(workdir / f"{Path(path).stem}_b{batch}")
    )
    feed = random_feed(session, batch)
    for _ in range(runs + 1):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    run_windows = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    if len(run_windows) > 1:
        run_windows = run_windows[1:]  # the first profiled run is a warm-up

    def in_runs(ts: int) -> bool:
        return any(lo <= ts <= hi for lo, hi in run_windows)

    # per node: its durations over the counted runs; the median resists other processes
    # stealing the CPU for part of one run (the node times vary 10x under such load)
    per_node: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or not in_runs(e["ts"]):
            continue
        args = e.get("args", {})
        node = e["name"][: -len("_kernel_time")]
        entry = per_node.setdefault(
            node, {"cat": op_category(e["name"], args), "macs": _executed_macs(args), "us": []}
        )
        entry["us"].append(e["dur"])
    cats: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "macs": 0.0, "nodes": 0})
    for entry in per_node.values():
        cat = cats[entry["cat"]]
        entry["ms"] = statistics.median(entry["us"]) / 1e3
        cat["ms"] += entry["ms"]
        cat["macs"] += entry["macs"]
        cat["nodes"] += 1
    slowest = sorted(per_node.items(), key=lambda kv: -kv[1]["ms"])[:6]
    # time outside kernels, run by run (session overhead, thread hand-offs, and other
    # processes preempting us between kernels), then the median over runs
    kernel_us = [0.0] * len(run_windows)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            for i, (lo, hi) in enumerate(run_windows):
                if lo <= e["ts"] <= hi:
                    kernel_us[i] += e["dur"]
    gaps = [(hi - lo) - k for (lo, hi), k in zip(run_windows, kernel_us)]
    return OpBreakdown(
        run_ms=statistics.median(hi - lo for lo, hi in run_windows) / 1e3,
        gap_ms=statistics.median(gaps) / 1e3,
        kernel_ms=sum(c["ms"] for c in cats.values()),
        nodes=len(per_node),
        by_category={k: dict(v) for k, v in sorted(cats.items(), key=lambda kv: -kv[1]["ms"])},
        top_nodes=[(name, e["cat"], e["ms"]) for name, e in slowest],
    )


def conv_widths(model) -> list[tuple[str, int, int, int]]:
    """(name, in, out, groups) of every Conv2d."""
    from torch import nn

    return [(n, m.in_channels, m.out_channels, m.groups)
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip


# --------------------------------------------------------------------------- one model


@dataclass
class BatchRow:
    batch: int
    dense_ms: float
    slim_ms: float
    speedup: float
    efficiency: float
    paired_speedup: float
    rounds: int
    capped_from: int | None = None  # the batch asked for, when it was capped
    dense_min_ms: float | None = None  # fastest run: the least disturbed by other processes
    slim_min_ms: float | None = None

    @property
    def min_speedup(self) -> float | None:
        if self.dense_min_ms is None or not self.slim_min_ms:
            return None
        return self.dense_min_ms / self.slim_min_ms


@dataclass
class ModelResult:
    model: str
    ratio: float
    input_size: int
    params_dense: int
    params_slim: int
    macs_dense: int
    macs_slim: int
    rows: list[BatchRow] = field(default_factory=list)
    report: dict[str, Any] | None = None  # fxprune.profile.ProfileReport.to_dict()
    slim_convs: list[tuple[str, int, int, int]] = field(default_factory=list)
    explain: dict[str, Any] = field(default_factory=dict)  # "b<batch>" -> {dense, slim}
    error: str | None = None

    @property
    def macs_reduction(self) -> float:
        return self.macs_dense / max(1, self.macs_slim)

    def row(self, batch: int) -> BatchRow | None:
        return next((r for r in self.rows if r.batch == batch), None)


def batches_for(
    spec: ModelSpec, batches: list[int], imagenet_max: int
) -> list[tuple[int, int | None]]:
    """(batch to run, batch asked for if capped) — large batches at 224 px are capped."""
    out: list[tuple[int, int | None]] = []
    for b in batches:
        if spec.size > 64 and b > imagenet_max:
            pair = (imagenet_max, b)
        else:
            pair = (b, None)
        if pair[0] not in [p[0] for p in out]:
            out.append(pair)
    return out


def benchmark_model(name: str, args, timing: Timing, workdir: Path, log) -> ModelResult:
    import fxprune
    from fxprune.export import export_onnx
    from fxprune.profile import Environment, ModelProfile, ProfileReport

    spec = SPECS[name]
    ratio = args.ratio if args.ratio is not None else spec.ratio
    dense, x = build_model(name, args.seed)
    log(f"{name}: pruning ({args.scorer}, ratio {ratio}, min-ratio {args.min_ratio})")
    pruned = fxprune.prune(dense, x, ratio=ratio, min_ratio=args.min_ratio, scorer=args.scorer,
                           round_to=args.round_to)  # fmt: skip
    result = ModelResult(name, ratio, spec.size, pruned.params_before, pruned.params_after,
                         pruned.flops_before, pruned.flops_after,
                         slim_convs=conv_widths(pruned.model))  # fmt: skip
    paths = {"dense": workdir / f"{name}_dense.onnx", "slim": workdir / f"{name}_slim.onnx"}
    log(f"{name}: exporting to ONNX (parity checked)")
    export_onnx(dense, x, paths["dense"])
    export_onnx(pruned.model, x, paths["slim"])
    sessions = {k: open_session(p, args.threads) for k, p in paths.items()}
    stats = {"dense": [], "slim": []}
    for batch, asked in batches_for(spec, args.batches, args.imagenet_max_batch):
        log(f"{name}: timing dense and slim interleaved at batch {batch}")
        feed = random_feed(sessions["dense"], batch)
        measured = time_interleaved(sessions, feed, timing)
        for key, series in stats.items():
            series.append(measured.stat(key, batch))
        d, s = stats["dense"][-1].median_ms, stats["slim"][-1].median_ms
        result.rows.append(BatchRow(batch, d, s, d / s, d / s / result.macs_reduction,
                                    measured.paired_speedup("dense", "slim"), measured.rounds,
                                    asked, min(measured.times["dense"]),
                                    min(measured.times["slim"])))  # fmt: skip
    report = ProfileReport(
        dense=ModelProfile(f"{name} dense", result.params_dense, result.macs_dense, tuple(stats["dense"])),
        slim=ModelProfile(f"{name} slim", result.params_slim, result.macs_slim, tuple(stats["slim"])),
        environment=Environment.current("CPUExecutionProvider", args.threads,
                                        [r.batch for r in result.rows]),
    )  # fmt: skip
    result.report = report.to_dict()
    del sessions
    for row in result.rows:
        if row.efficiency < args.explain_below:
            log(f"{name}: efficiency {row.efficiency:.2f} at batch {row.batch}: per-op profile")
            runs = 3 if row.dense_ms > 500 else 10
            result.explain[f"b{row.batch}"] = {
                k: op_breakdown(p, row.batch, args.threads, runs, workdir).to_dict()
                for k, p in paths.items()
            }
    return result


# --------------------------------------------------------------------------- output


def _count(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}"


def render(results: list[ModelResult], args, timing: Timing):
    from rich.table import Table

    rounding = f", round-to {args.round_to}" if args.round_to else ""
    table = Table(title=f"Dense vs slim, onnxruntime CPU, {args.threads} threads, {args.scorer}"
                        f"{rounding}, median ms (interleaved, >= {timing.min_rounds} rounds)",
                  title_justify="left")  # fmt: skip
    for header in (
        "model",
        "ratio",
        "params dense→slim",
        "MACs dense→slim",
        "MACs red.",
        "batch",
        "dense ms",
        "slim ms",
        "speed-up",
        "efficiency",
        "min-run speed-up",
    ):
        table.add_column(header, justify="left" if header == "model" else "right")
    for r in results:
        if r.error:
            table.add_row(r.model, "", f"failed: {r.error}", *[""] * 8)
            continue
        for i, row in enumerate(r.rows):
            first = i == 0
            batch = f"{row.batch}" + (f" (not {row.capped_from})" if row.capped_from else "")
            eff = f"{row.efficiency:.2f}"
            table.add_row(
                f"{r.model} ({r.input_size}px)" if first else "",
                f"{r.ratio:g}" if first else "",
                f"{_count(r.params_dense)}→{_count(r.params_slim)}" if first else "",
                f"{_count(r.macs_dense)}→{_count(r.macs_slim)}" if first else "",
                f"{r.macs_reduction:.2f}×" if first else "",
                batch, f"{row.dense_ms:.2f}", f"{row.slim_ms:.2f}", f"{row.speedup:.2f}×",
                f"[green]{eff}[/]" if row.efficiency >= GOAL_EFFICIENCY else f"[red]{eff}[/]",
                f"{row.min_speedup:.2f}×" if row.min_speedup else "—",
                end_section=i == len(r.rows) - 1,
            )  # fmt: skip
    return table


def goal_line(results: list[ModelResult]) -> str:
    """Compare with 'speed-up >= 0.7 x MACs reduction at batch 64 on CPU'."""
    parts, met, judged = [], 0, 0
    for r in results:
        if r.error or not r.rows:
            continue
        row = r.row(GOAL_BATCH) or next((x for x in r.rows if x.capped_from == GOAL_BATCH), None)
        if row is None:
            continue
        judged += 1
        ok = row.efficiency >= GOAL_EFFICIENCY
        met += ok
        note = f" at b{row.batch}" if row.batch != GOAL_BATCH else ""
        parts.append(f"{r.model} {row.speedup:.2f}×/{r.macs_reduction:.2f}× = {row.efficiency:.2f}"
                     f"{note} {'ok' if ok else 'MISSED'}")  # fmt: skip
    if not judged:
        return f"Goal (speed-up >= {GOAL_EFFICIENCY} × MACs reduction at batch {GOAL_BATCH}): no batch-{GOAL_BATCH} run"
    return (f"Goal: speed-up >= {GOAL_EFFICIENCY} × MACs reduction at batch {GOAL_BATCH} on CPU: "
            f"met by {met}/{judged} models — " + "; ".join(parts))  # fmt: skip


def render_explain(r: ModelResult):
    from rich.table import Table

    tables = []
    for key, pair in r.explain.items():
        dense, slim = pair["dense"], pair["slim"]
        t = Table(title=f"{r.model} {key}: where the time goes (per run, onnxruntime node profile)",
                  title_justify="left")  # fmt: skip
        for h in (
            "op kind",
            "dense ms",
            "dense %",
            "slim ms",
            "slim %",
            "slim nodes",
            "dense GMAC/s",
            "slim GMAC/s",
            "kind speed-up",
        ):
            t.add_column(h, justify="left" if h == "op kind" else "right")
        kinds = list(dict.fromkeys([*slim["by_category"], *dense["by_category"]]))
        for kind in kinds:
            dk = dense["by_category"].get(kind, {"ms": 0.0, "macs": 0.0, "nodes": 0})
            sk = slim["by_category"].get(kind, {"ms": 0.0, "macs": 0.0, "nodes": 0})

            def rate(c):
                return f"{c['macs'] / c['ms'] / 1e6:.1f}" if c["macs"] and c["ms"] else ""

            t.add_row(kind, f"{dk['ms']:.2f}", f"{100 * dk['ms'] / dense['kernel_ms']:.0f}",
                      f"{sk['ms']:.2f}", f"{100 * sk['ms'] / slim['kernel_ms']:.0f}",
                      f"{sk['nodes']:.0f}", rate(dk), rate(sk),
                      f"{dk['ms'] / sk['ms']:.2f}×" if sk["ms"] and dk["ms"] else "")  # fmt: skip
        t.add_row("[dim]outside kernels (run - kernels)[/]",
                  f"{dense['gap_ms']:.2f}", "", f"{slim['gap_ms']:.2f}",
                  "", f"{slim['nodes']}", "", "", "")  # fmt: skip
        tables.append(t)
    return tables


def diagnose(r: ModelResult, key: str) -> list[str]:
    """A few sentences from the numbers of one per-op profile."""
    pair = r.explain[key]
    dense, slim = pair["dense"], pair["slim"]
    batch = int(key[1:])
    lines = []
    conv_macs = lambda p: sum(
        c["macs"] for k, c in p["by_category"].items() if "conv" in k or "depthwise" in k
    )
    useful_slim = r.macs_slim * batch
    executed = conv_macs(slim)
    if executed:
        lines.append(f"slim model executes {executed / max(1, useful_slim):.2f}× its counted MACs "
                     f"(dense: {conv_macs(dense) / max(1, r.macs_dense * batch):.2f}×): NCHWc pads "
                     "channel counts up to the SIMD block")  # fmt: skip
    top = list(slim["by_category"].items())[:3]
    lines.append(
        "slim time: " + ", ".join(f"{k} {100 * v['ms'] / slim['kernel_ms']:.0f}%" for k, v in top)
    )
    for kind in (
        "conv kxk (NCHWc)",
        "conv 1x1 (NCHWc)",
        "conv kxk (NCHW)",
        "conv 1x1 (NCHW)",
        "depthwise (NCHWc)",
        "depthwise (NCHW)",
    ):
        d, s = dense["by_category"].get(kind), slim["by_category"].get(kind)
        if s and s["macs"] and s["ms"]:
            dr = f"{d['macs'] / d['ms'] / 1e6:.1f}" if d and d["ms"] and d["macs"] else "—"
            lines.append(f"{kind}: {s['macs'] / s['ms'] / 1e6:.1f} GMAC/s slim vs {dr} dense")
    over_d, over_s = dense["gap_ms"], slim["gap_ms"]
    lines.append(f"per-run overhead outside kernels {over_s:.2f} ms slim / {over_d:.2f} ms dense "
                 f"= {100 * over_s / max(slim['run_ms'], 1e-9):.0f}% of the slim run; "
                 f"{slim['nodes']} slim vs {dense['nodes']} dense kernel launches, "
                 f"{1e3 * slim['kernel_ms'] / max(1, slim['nodes']):.0f} µs per slim kernel")  # fmt: skip
    widths = [w[2] for w in r.slim_convs]
    if widths:
        odd16 = sum(1 for w in widths if w % 16)
        lines.append(f"slim conv output widths: min {min(widths)}, median {statistics.median(widths):g}, "
                     f"{odd16}/{len(widths)} not a multiple of 16; "
                     f"{sum(1 for w in widths if w < 8)} narrower than 8")  # fmt: skip
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, from {', '.join(SPECS)}",
    )
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument(
        "--imagenet-max-batch",
        type=int,
        default=16,
        help="cap for batch sizes of the 224-px models (dense resnet50 at batch 64 "
        "takes ~10 s a run on 2 cores)",
    )
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--ratio", type=float, default=None, help="override every model's ratio")
    p.add_argument("--min-ratio", type=float, default=0.15)
    p.add_argument("--scorer", default="synflow")
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of this (fxprune.prune round_to)",
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed for init and pruning")
    p.add_argument(
        "--explain-below",
        type=float,
        default=0.5,
        help="per-op profile where efficiency is below this (0: never)",
    )
    p.add_argument("--min-rounds", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing rounds")
    p.add_argument("--json", dest="json_path", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep the ONNX files here")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in SPECS]
    if unknown:
        p.error(f"unknown model(s) {unknown}: choose from {', '.join(SPECS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def timing_from(args) -> Timing:
    base = QUICK if args.quick else FULL
    changes = {}
    if args.min_rounds is not None:
        changes["min_rounds"] = args.min_rounds
    if args.min_seconds is not None:
        changes["min_seconds"] = args.min_seconds
    return Timing(**{**asdict(base), **changes})


def main(argv=None) -> int:
    import torch
    from rich.console import Console

    args = parse_args(argv)
    timing = timing_from(args)
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    console = Console(width=180)
    results: list[ModelResult] = []
    with tempfile.TemporaryDirectory(prefix="fxprune-latency-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            try:
                results.append(benchmark_model(name, args, timing, workdir, console.log))
            except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
                text = str(error).strip().splitlines()[0] if str(error).strip() else ""
                console.log(f"[red]{name} failed: {type(error).__name__}: {text}")
                results.append(
                    ModelResult(name, 0, 0, 0, 0, 0, 0, error=f"{type(error).__name__}: {text}")
                )
    load_end = os.getloadavg()[0]
    console.print(render(results, args, timing))
    console.print(
        "[dim]speed-up = dense median / slim median; efficiency = speed-up / MACs reduction; "
        "min-run speed-up = dense fastest run / slim fastest run. "
        f"1-min load average {load_start:.1f} at start, {load_end:.1f} at end on "
        f"{os.cpu_count()} CPUs: where it exceeds the CPU count, other processes preempt the "
        "intra-op threads and long runs (dense, big batches) lose more than short ones, so "
        "median and min-run speed-ups disagree; --threads 1 is steadier on a shared box.[/]"
    )
    import onnxruntime as ort

    from fxprune.profile import cpu_model

    capped = sorted({r.model for r in results for row in r.rows if row.capped_from})
    console.print(f"[dim]CPU: {cpu_model()}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
                  f"seed {args.seed}, scorer {args.scorer}, min-ratio {args.min_ratio}"
                  + (f", round-to {args.round_to}" if args.round_to else "") + "[/]")  # fmt: skip
    if capped:
        console.print(f"[yellow]224-px models ({', '.join(capped)}) ran at batch "
                      f"{args.imagenet_max_batch} instead of the larger batch asked for "
                      f"(dense resnet50 at batch 64 takes ~10 s a run on 2 cores).[/]")  # fmt: skip
    console.print(goal_line(results))
    for r in results:
        if not r.explain:
            continue
        for table in render_explain(r):
            console.print(table)
        for key in r.explain:
            for line in diagnose(r, key):
                console.print(f"  {r.model} {key}: {line}")
    if args.json_path is not None:
        payload = {
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "timing": asdict(timing)},
            "goal": goal_line(results),
            "results": [
                {**asdict(r), "macs_reduction": r.macs_reduction,
                 "min_speedups": {row.batch: row.min_speedup for row in r.rows}}
                for r in results
            ],
        }  # fmt: skip
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(payload, indent=1))
        console.log(f"wrote {args.json_path}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
