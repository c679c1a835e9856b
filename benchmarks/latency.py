"""Dense vs slim latency in ONNX Runtime (CPU), measured side by side in one run.

For each model (``weights=None``) the dense network is pruned with ``fxprune.prune``
(scorer synflow; CIFAR ResNet-56 / VGG16-BN / MobileNetV2 at ratio 0.85, torchvision
resnet50 / mobilenet_v2 at ratio 0.5; min-ratio 0.15), both are exported with
``fxprune.deploy.export_onnx`` (parity checked) and timed in onnxruntime with the same
session settings as ``fxprune.deploy.runtime`` (ORT_ENABLE_ALL, intra-op threads = --threads,
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
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FULL,
    QUICK,
    SPECS,
    ModelSpec,
    Timing,
    add_common_args,
    build_model,
    count,
    environment_line,
    open_session,
    random_feed,
    time_interleaved,
)
from latency_explain import conv_widths, diagnose, render_explain

GOAL_EFFICIENCY = 0.7
GOAL_BATCH = 64
DEFAULT_MODELS = list(SPECS)


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
    report: dict[str, Any] | None = None  # fxprune.deploy.ProfileReport.to_dict()
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
    from fxprune.deploy import Environment, ModelProfile, ProfileReport, export_onnx
    from fxprune.deploy.layer_profile import op_breakdown

    spec = SPECS[name]
    ratio = args.ratio if args.ratio is not None else spec.ratio
    dense, x = build_model(name, args.seed)
    log(f"{name}: pruning ({args.scorer}, ratio {ratio}, min-ratio {args.min_ratio})")
    pruned = fxprune.prune(dense, x, ratio=ratio, min_ratio=args.min_ratio, scorer=args.scorer,
                           round_to=args.round_to)  # fmt: skip
    result = ModelResult(name, ratio, spec.size, pruned.params_before, pruned.params_after,
                         pruned.macs_before, pruned.macs_after,
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
                f"{count(r.params_dense)}→{count(r.params_slim)}" if first else "",
                f"{count(r.macs_dense)}→{count(r.macs_slim)}" if first else "",
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
    p.add_argument("--ratio", type=float, default=None, help="override every model's ratio")
    p.add_argument("--min-ratio", type=float, default=0.15)
    p.add_argument("--scorer", default="synflow")
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of this (fxprune.prune round_to)",
    )
    p.add_argument(
        "--explain-below",
        type=float,
        default=0.5,
        help="per-op profile where efficiency is below this (0: never)",
    )
    p.add_argument("--min-rounds", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    add_common_args(p)
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
    capped = sorted({r.model for r in results for row in r.rows if row.capped_from})
    console.print("[dim]" + environment_line(args.threads, seed=args.seed, scorer=args.scorer,
                                             min_ratio=args.min_ratio, round_to=args.round_to) + "[/]")  # fmt: skip
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
