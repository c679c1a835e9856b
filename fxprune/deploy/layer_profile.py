"""Where the time goes inside one ONNX model: onnxruntime's per-node profiler.

``node_times`` runs a file with ``SessionOptions.enable_profiling`` and returns the
median kernel time of every node over the profiled runs (the median resists other
processes stealing the CPU during one run). ``op_breakdown`` groups them by kind of op
(NCHWc conv, NCHW-fallback conv, depthwise, layout reorders, BN/elementwise, ...) with
the MACs each kind executes at the shapes onnxruntime ran it at (NCHWc pads channel
counts up to the SIMD block), and the per-run time spent outside kernels.
``layer_rows`` lines up the nodes of a dense and a slim export by name.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .runtime import CPU, open_session, random_feed

KERNEL_SUFFIX = "_kernel_time"


@dataclass
class ProfiledRuns:
    """Raw events of ``runs`` profiled runs (the first run is skipped as a warm-up)."""

    windows: list[tuple[int, int]]  # (start, end) in µs of each counted run
    nodes: dict[str, dict[str, Any]]  # node -> {"op", "args", "us": [per-run durations]}
    kernel_us: list[float]  # per counted run: sum of its kernel times


def profiled_runs(path, batch: int, threads: int | None, runs: int, workdir: Path,
                  providers: list[str] | None = None) -> ProfiledRuns:  # fmt: skip
    import numpy as np

    session = open_session(Path(path), providers or [CPU], threads,
                           profile_prefix=str(Path(workdir) / f"{Path(path).stem}_b{batch}"))  # fmt: skip
    feed = random_feed(session, batch, np.random.default_rng(0), path)
    for _ in range(runs + 1):
        session.run(None, feed)
    profile_file = Path(session.end_profiling())
    events = json.loads(profile_file.read_text())
    profile_file.unlink(missing_ok=True)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")  # fmt: skip
    if len(windows) > 1:
        windows = windows[1:]  # the first profiled run is a warm-up
    nodes: dict[str, dict[str, Any]] = {}
    kernel_us = [0.0] * len(windows)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith(KERNEL_SUFFIX):
            continue
        run = next((i for i, (lo, hi) in enumerate(windows) if lo <= e["ts"] <= hi), None)
        if run is None:
            continue
        kernel_us[run] += e["dur"]
        entry = nodes.setdefault(e["name"][: -len(KERNEL_SUFFIX)],
                                 {"op": e.get("args", {}).get("op_name", "?"),
                                  "args": e.get("args", {}), "event": e["name"], "us": []})  # fmt: skip
        entry["us"].append(e["dur"])
    return ProfiledRuns(windows, nodes, kernel_us)


def node_times(path, batch: int, threads: int | None, workdir: Path, runs: int = 5,
               providers: list[str] | None = None) -> dict[str, tuple[str, float]]:  # fmt: skip
    """Node name -> (op type, median ms per run)."""
    profiled = profiled_runs(path, batch, threads, runs, workdir, providers)
    return {name: (entry["op"], statistics.median(entry["us"]) / 1e3)
            for name, entry in profiled.nodes.items()}  # fmt: skip


def layer_rows(dense_path, slim_path, batch: int, threads: int | None,
               providers: list[str] | None, workdir: Path, runs: int = 5) -> list[dict[str, Any]]:  # fmt: skip
    """Per node of the dense model, slowest first: its ms per run dense and slim (None
    when the slim model has no node of that name, e.g. a removed block)."""
    dense = node_times(dense_path, batch, threads, workdir, runs, providers)
    slim = node_times(slim_path, batch, threads, workdir, runs, providers)
    rows = []
    for name, (op, ms) in sorted(dense.items(), key=lambda item: -item[1][1]):
        rows.append({"layer": _layer_name(name), "node": name, "op": op, "dense_ms": ms,
                     "slim_ms": slim[name][1] if name in slim else None})  # fmt: skip
    return rows


def _layer_name(node: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``: the module path, when the
    exporter encoded one in the node name."""
    parts = [p for p in node.split("/") if p]
    if len(parts) >= 2:
        return parts[-2]
    return node


# --------------------------------------------------------------------------- op kinds


def conv_kind(args: dict[str, Any]) -> str:
    shapes = args.get("input_type_shape") or []
    weight = next(iter(shapes[1].values())) if len(shapes) > 1 else None
    if not weight or len(weight) < 3:
        return "conv"
    cin_per_group = weight[1]
    kernel = math.prod(weight[2:])
    if cin_per_group == 1 and weight[0] > 1 and kernel > 1:
        return "depthwise"
    return "conv 1x1" if kernel == 1 else "conv kxk"


def executed_macs(args: dict[str, Any]) -> int:
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


def op_category(event_name: str, args: dict[str, Any]) -> str:
    op = args.get("op_name", "?")
    if op in ("Conv", "FusedConv"):
        layout = "NCHWc" if event_name.endswith("_nchwc" + KERNEL_SUFFIX) else "NCHW"
        return f"{conv_kind(args)} ({layout})"
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
    """Per-node profile of ``path`` at ``batch`` grouped by kind of op."""
    profiled = profiled_runs(path, batch, threads, runs, workdir)
    cats: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "macs": 0.0, "nodes": 0})
    per_node = {}
    for node, entry in profiled.nodes.items():
        category = op_category(entry["event"], entry["args"])
        ms = statistics.median(entry["us"]) / 1e3
        per_node[node] = (category, ms)
        cat = cats[category]
        cat["ms"] += ms
        cat["macs"] += executed_macs(entry["args"])
        cat["nodes"] += 1
    slowest = sorted(per_node.items(), key=lambda kv: -kv[1][1])[:6]
    gaps = [(hi - lo) - k for (lo, hi), k in zip(profiled.windows, profiled.kernel_us)]
    return OpBreakdown(
        run_ms=statistics.median(hi - lo for lo, hi in profiled.windows) / 1e3,
        gap_ms=statistics.median(gaps) / 1e3,
        kernel_ms=sum(c["ms"] for c in cats.values()),
        nodes=len(per_node),
        by_category={k: dict(v) for k, v in sorted(cats.items(), key=lambda kv: -kv[1]["ms"])},
        top_nodes=[(name, cat, ms) for name, (cat, ms) in slowest],
    )


__all__ = ["OpBreakdown", "conv_kind", "executed_macs", "layer_rows", "node_times",
           "op_breakdown", "op_category", "profiled_runs"]  # fmt: skip
