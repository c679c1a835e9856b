"""Same latency, more capacity: fxprune ``target="latency=f"`` vs Torch-Pruning, one run.

For each case the dense model (``weights=None``, seed 0) is

* pruned by Torch-Pruning at the ratio (global L1 magnitude, ``MagnitudePruner`` with
  ``global_pruning=True``, its default widths, the classifier ignored); its ONNX Runtime
  latency, timed interleaved with the dense model, is a fraction ``f`` of dense;
* pruned by fxprune with ``prune_to_latency(dense, x, latency=f, scorer=S,
  objective=O)`` for each ``S[:O]`` of ``--scorer`` (default ``l1,synflow,l1:capacity``:
  Torch-Pruning's criterion, so only the widths differ; fxprune's default scorer; and L1
  with the ``capacity`` objective, which spends the budget on MACs; measured latency
  table, cached in a fresh folder so the first variant's build time is real, the others
  hit that cache; +-10% correction loop);

then dense, Torch-Pruning and every fxprune model are timed interleaved in one last group (onnxruntime
CPU, intra-op threads = --threads, inter-op 1; median of every run; each interleaved group
runs >= 9 rounds and >= 20 s). Goal: fxprune's
latency <= 1.05x Torch-Pruning's while its MACs are >= 1.25x Torch-Pruning's.

    .venv/bin/python benchmarks/latency_target.py
    .venv/bin/python benchmarks/latency_target.py --cases resnet56 --quick
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FULL,
    QUICK,
    SPECS,
    add_common_args,
    build_model,
    count,
    environment_line,
    first_line,
    open_session,
    random_feed,
    split_list,
    time_interleaved,
    write_json,
)

# case -> (model in SPECS, Torch-Pruning ratio, batch)
CASES = {
    "resnet50": ("resnet50", 0.5, 8),
    "mobilenet_v2": ("mobilenet_v2", 0.5, 8),
    "resnet56": ("resnet56", 0.85, 64),
    "mobilenetv2": ("mobilenetv2", 0.85, 64),
}
GOAL_LATENCY = 1.05  # fxprune latency <= this x Torch-Pruning's
GOAL_MACS = 1.25  # fxprune MACs >= this x Torch-Pruning's


@dataclass
class CaseResult:
    case: str
    ratio: float
    batch: int
    scorer: str = "l1"
    macs_dense: int = 0
    macs_tp: int = 0
    macs_fx: int = 0
    tp_fraction: float = 0.0  # Torch-Pruning latency / dense, first timing = fxprune's target
    fx_fraction_loop: float = 0.0  # what fxprune's own loop measured
    dense_ms: float = 0.0  # final interleaved group
    tp_ms: float = 0.0
    fx_ms: float = 0.0
    table_seconds: float = 0.0
    table_cached: bool = False
    iterations: int = 0
    predicted_first: float = 0.0  # the latency model's prediction for fxprune's first attempt
    measured_first: float = 0.0  # ... and what that attempt measured (both slim / dense)
    calibration: str = ""
    prune_seconds: float = 0.0  # all of prune_to_latency
    blocks: str = ""
    fx_widths: str = ""
    tp_widths: str = ""
    error: str | None = None

    @property
    def latency_vs_tp(self) -> float:
        return self.fx_ms / self.tp_ms if self.tp_ms else float("nan")

    @property
    def macs_vs_tp(self) -> float:
        return self.macs_fx / self.macs_tp if self.macs_tp else float("nan")

    @property
    def target_error(self) -> float:
        """Final fxprune fraction of dense vs its target (the TP fraction), relative."""
        return (self.fx_ms / self.dense_ms) / self.tp_fraction - 1 if self.dense_ms and self.tp_fraction else float("nan")

    @property
    def met(self) -> bool:
        return self.latency_vs_tp <= GOAL_LATENCY and self.macs_vs_tp >= GOAL_MACS


def torch_pruning(model, x, ratio: float):
    import torch_pruning as tp
    from torch import nn

    owned = copy.deepcopy(model)
    classifier = [m for m in owned.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(owned, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, global_pruning=True,
                                       ignored_layers=[classifier])  # fmt: skip
    pruner.step()
    return owned.eval()


def widths(model) -> str:
    from torch import nn

    out = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    odd = sum(1 for w in out if w % 16)
    return f"{len(out)} convs, median {sorted(out)[len(out) // 2]}, {odd} not a multiple of 16"


def run_case(case: str, args, timing, workdir: Path, log) -> list[CaseResult]:
    """One Torch-Pruning model and its measured fraction f, then one fxprune model per
    scorer at ``latency=f`` (the first scorer builds the latency table, the others hit its
    cache), then all of them timed interleaved in one group."""
    from fxprune.cost import count_macs
    from fxprune.deploy import export_onnx

    name, ratio, batch = CASES[case]
    base = CaseResult(case, ratio, batch)
    dense, x = build_model(name, args.seed, batch)
    base.macs_dense = count_macs(dense, (x[:1],))
    log(f"{case}: Torch-Pruning, global L1 at ratio {ratio}")
    tp_model = torch_pruning(dense, x[:1], ratio)
    base.macs_tp = count_macs(tp_model, (x[:1],))
    base.tp_widths = widths(tp_model)
    paths = {k: workdir / f"{case}_{k}.onnx" for k in ("dense", "tp")}
    export_onnx(dense, x[:1], paths["dense"])
    export_onnx(tp_model, x[:1], paths["tp"])
    sessions = {k: open_session(paths[k], args.threads) for k in ("dense", "tp")}
    feed = random_feed(sessions["dense"], batch)
    log(f"{case}: timing dense vs Torch-Pruning at batch {batch}")
    first = time_interleaved(sessions, feed, timing)
    base.tp_fraction = first.median("tp") / first.median("dense")
    del sessions
    log(f"{case}: Torch-Pruning runs at {base.tp_fraction:.3f} of dense; fxprune target latency={base.tp_fraction:.3f}")
    results = []
    for scorer in args.scorers:
        result = replace(base, scorer=scorer)
        fx = prune_case(result, dense, x, args, workdir, log)
        paths[f"fx-{scorer}"] = workdir / f"{case}_fx_{scorer.replace(':', '_')}.onnx"
        export_onnx(fx.model, x[:1], paths[f"fx-{scorer}"])
        results.append(result)
    sessions = {k: open_session(path, args.threads) for k, path in paths.items()}
    log(f"{case}: final timing, dense / Torch-Pruning / fxprune ({', '.join(args.scorers)}) interleaved")
    final = time_interleaved(sessions, feed, timing)
    for result in results:
        result.dense_ms, result.tp_ms = final.median("dense"), final.median("tp")
        result.fx_ms = final.median(f"fx-{result.scorer}")
    return results


def variant(label: str) -> tuple[str, str]:
    """``SCORER[:OBJECTIVE]`` of ``--scorer`` -> (scorer, objective; ``score`` if none)."""
    scorer, _, objective = label.partition(":")
    return scorer, objective or "score"


def prune_case(result: CaseResult, dense, x, args, workdir: Path, log):
    """fxprune ``prune_to_latency(dense, x, latency=f)`` with ``result.scorer``; fills
    ``result`` and returns the ``LatencyResult``."""
    import torch

    from fxprune.cost import count_macs
    from fxprune.deploy import prune_to_latency

    case, label = result.case, result.scorer
    scorer, objective = variant(label)
    started = time.perf_counter()
    fx = prune_to_latency(dense, x, result.tp_fraction, scorer=scorer, objective=objective,
                          threads=args.threads, cache_dir=args.cache_dir or workdir / "cache",
                          tolerance=args.tolerance, progress=lambda line: log(f"{case} ({label}): {line}"))  # fmt: skip
    torch.set_num_threads(args.threads)
    result.prune_seconds = time.perf_counter() - started
    result.table_seconds, result.table_cached = fx.table_seconds, fx.table_cached
    result.iterations, result.fx_fraction_loop = len(fx.steps), fx.measured
    result.predicted_first, result.measured_first = fx.steps[0].predicted, fx.steps[0].measured
    cal = fx.calibration
    result.calibration = (f"dense {cal['dense_ms']:.1f} ms vs table {cal['table_dense_ms']:.1f} ms, overhead "
                          f"{cal['overhead_ms']:.2f} ms, final fit table x{cal['scale']:.2f} + "
                          f"{cal['act_ms_per_M']:.3f} ms/M activations")  # fmt: skip
    result.blocks = ", ".join(f"{k} {v}" for k, v in sorted(fx.blocks.items()))
    result.macs_fx = count_macs(fx.model, (x[:1],))
    result.fx_widths = widths(fx.model)
    return fx


def render(results: list[CaseResult], args):
    from rich.table import Table

    table = Table(title=f"fxprune latency target vs Torch-Pruning, onnxruntime CPU, {args.threads} threads, "
                        f"median ms (interleaved)", title_justify="left")  # fmt: skip
    for header in ("case", "fx scorer", "batch", "TP ratio", "target f", "dense ms", "TP ms", "fx ms",
                   "fx/TP latency", "MACs dense", "MACs TP", "MACs fx", "fx/TP MACs",
                   "fx vs target", "1st pred/meas", "table s", "tries", "goal"):  # fmt: skip
        table.add_column(header, justify="left" if header == "case" else "right")
    for r in results:
        if r.error:
            table.add_row(r.case, r.scorer, str(r.batch), f"{r.ratio:g}", f"failed: {r.error}", *[""] * 13)
            continue
        table.add_row(r.case, r.scorer, str(r.batch), f"{r.ratio:g}", f"{r.tp_fraction:.3f}", f"{r.dense_ms:.1f}",
                      f"{r.tp_ms:.1f}", f"{r.fx_ms:.1f}", f"{r.latency_vs_tp:.2f}×", count(r.macs_dense),
                      count(r.macs_tp), count(r.macs_fx), f"{r.macs_vs_tp:.2f}×", f"{100 * r.target_error:+.0f}%",
                      f"{r.predicted_first:.3f}/{r.measured_first:.3f}",
                      f"{r.table_seconds:.0f}" + (" (cached)" if r.table_cached else ""), str(r.iterations),
                      "[green]met[/]" if r.met else "[red]missed[/]")  # fmt: skip
    return table


def main(argv=None) -> int:
    import torch
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--scorer", default="l1,synflow,l1:capacity",
                        help="fxprune variants SCORER[:OBJECTIVE], comma-separated: each prunes to the same f "
                             "(l1: Torch-Pruning's criterion; synflow: fxprune's default; objective score "
                             "(default) or capacity)")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.10, help="prune_to_latency tolerance")
    parser.add_argument("--cache-dir", type=Path, default=None, help="latency-table cache (default: fresh)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.scorers = [name.strip() for name in args.scorer.split(",") if name.strip()]
    try:
        from fxprune.deploy import LatencyTarget
        from fxprune.scoring import get_scorer

        for name in args.scorers:
            scorer, objective = variant(name)
            get_scorer(scorer)
            LatencyTarget(0.5, objective=objective)
    except Exception as error:  # noqa: BLE001 - one line for a bad --scorer
        parser.error(first_line(error))
    try:
        cases = split_list(args.cases, CASES, "case")
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    assert all(CASES[c][0] in SPECS for c in cases)
    # long groups: the goal's 5% margin is smaller than the noise of short ones on a busy box
    timing = QUICK if args.quick else replace(FULL, min_rounds=9, min_seconds=20.0, max_seconds=180.0)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    console = Console(width=200)
    results = []
    with tempfile.TemporaryDirectory(prefix="fxprune-latency-target-") as scratch:
        for case in cases:
            try:
                results.extend(run_case(case, args, timing, Path(scratch), console.log))
            except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
                console.log(f"[red]{case} failed: {first_line(error)}")
                _, ratio, batch = CASES[case]
                results.append(CaseResult(case, ratio, batch, scorer="-", error=first_line(error)))
    console.print(render(results, args))
    for r in results:
        if not r.error:
            console.print(f"  {r.case} ({r.scorer}): fxprune widths: {r.fx_widths}; Torch-Pruning: {r.tp_widths}; "
                          f"blocks {r.blocks}; prune_to_latency {r.prune_seconds:.0f} s, its own final "
                          f"measurement {r.fx_fraction_loop:.3f} of dense; latency model: {r.calibration}")  # fmt: skip
    for scorer in args.scorers:
        rows = [r for r in results if r.scorer == scorer]
        met = sum(r.met for r in rows if not r.error)
        console.print(f"Goal: fxprune ({scorer}) latency <= {GOAL_LATENCY}× Torch-Pruning's with MACs >= "
                      f"{GOAL_MACS}× theirs: met on {met}/{len(cases)} cases")  # fmt: skip
    console.print("[dim]" + environment_line(args.threads, seed=args.seed, scorer=",".join(args.scorers)) + "[/]")
    if args.json_path is not None:
        write_json(args.json_path, {"settings": vars(args), "results": [
            {**asdict(r), "latency_vs_tp": r.latency_vs_tp, "macs_vs_tp": r.macs_vs_tp,
             "target_error": r.target_error, "met": r.met} for r in results]})  # fmt: skip
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
