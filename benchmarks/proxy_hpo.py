"""Typical HPO vs HPO on a pruned proxy (Lee & Yim), measured side by side in one run.

For each dataset (digits always; CIFAR-10 too when --data-dir holds it) this runs
``hpo.driver.compare``: the same sampler, seed, trial budget and epochs on the base network
and on its pruned, reinitialised proxy; each winner is trained on the base network over
--seeds seeds; K shared random configurations are trained on both networks. It prints the
HPO time reduction, the final-accuracy gap, Kendall's tau, and the budgets and seeds used.

The default budget (resnet20 on 16x16 digits, 10 trials x 6 epochs, 2 seeds, K=5, one torch
thread) took 7.2 minutes on a 2-core machine shared with other jobs. Each run gets a fresh
folder, so numbers are never mixed with an earlier run's (pass --out to resume one instead).

    .venv/bin/python benchmarks/proxy_hpo.py
    .venv/bin/python benchmarks/proxy_hpo.py --data-dir ~/data/cifar10 --epochs 20
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fxprune:resnet20")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "gp", "cmaes", "random"])
    parser.add_argument("--pruner", default="hyperband", choices=["hyperband", "median", "none"])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2, help="final base-network seeds")
    parser.add_argument("--kendall-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.85)
    parser.add_argument("--min-ratio", type=float, default=0.15)
    parser.add_argument("--scorer", default=None, help="default: synflow if fxprune has it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=None, help="digits side (16)")
    parser.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="parent folder of the run folders (default: a fresh one)")
    return parser.parse_args()


def default_scorer() -> str:
    from fxprune.errors import FxPruneError
    from fxprune.scoring import get_scorer

    try:
        get_scorer("synflow")
    except FxPruneError:
        return "l1"
    return "synflow"


def epochs_trained(study) -> int:
    return sum(t.epochs_run for t in study.trials)


def print_figures(report, elapsed: float) -> None:
    typical, proxy = report.study("typical"), report.study("proxy")
    print(f"  data: {report.data}")
    if report.proxy is not None:
        info = report.proxy
        print(f"  proxy: {info.params_after:,}/{info.params_before:,} params "
              f"({100 * info.param_fraction:.1f}%), {100 * info.flops_fraction:.1f}% of MACs, "
              f"pruned in {info.prune_seconds:.2f}s")
    for study in (typical, proxy):
        epochs = epochs_trained(study)
        counts = study.counts
        print(f"  {study.name:8s} HPO: {study.wall_seconds:7.1f}s wall, {epochs} epochs trained "
              f"({study.wall_seconds / max(1, epochs):.2f}s/epoch), "
              f"{counts.get('COMPLETE', 0)} complete / {counts.get('PRUNED', 0)} pruned / "
              f"{counts.get('FAIL', 0)} failed, best {100 * (study.best_value or 0):.2f}% "
              f"with {study.best_params}")
    for final in report.finals:
        print(f"  base trained with {final.source:7s} winner: {100 * final.mean:.2f}% "
              f"+- {100 * final.std:.2f} (seeds {list(final.seeds)}, accuracies "
              f"{[round(100 * a, 2) for a in final.accuracies]})")
    print(f"  HPO time reduction: {report.time_reduction_pct:.1f}%")
    print(f"  accuracy gap (proxy - typical): {report.accuracy_gap:+.2f} pp")
    if report.rank is not None:
        tau = report.rank.tau
        print(f"  Kendall tau over K={len(report.rank.params)} shared configurations: "
              + ("undefined (ties)" if tau is None else f"{tau:.3f} (p={report.rank.p_value:.3g})"))
        for name, scores in (("base ", report.rank.base_scores),
                             ("proxy", report.rank.proxy_scores)):
            percents = [None if score is None else round(100 * score, 1) for score in scores]
            print(f"    {name} scores: {percents}")
    print(f"  benchmark wall time: {elapsed:.0f}s")


def main() -> None:
    args = parse_args()
    import torch

    from hpo.driver import HpoConfig, compare

    scorer = args.scorer or default_scorer()
    parent = args.out or Path("runs/proxy_hpo_bench") / time.strftime("%Y%m%d-%H%M%S")
    datasets = [("digits", None)] + ([("cifar10", str(args.data_dir))] if args.data_dir else [])
    print(f"proxy-HPO benchmark on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} thread(s) x {args.workers} worker(s)")
    print(f"model {args.model}; sampler {args.sampler}, pruner {args.pruner}; "
          f"{args.trials} trials x {args.epochs} epochs per search; final seeds "
          f"{list(range(args.seed, args.seed + args.seeds))}; K={args.kendall_k}; seed "
          f"{args.seed}; proxy = {scorer} ratio {args.ratio}, min-ratio {args.min_ratio}")
    for data, data_dir in datasets:
        config = HpoConfig(
            model=args.model, data=data, data_dir=data_dir, out=str(parent / data),
            sampler=args.sampler, pruner=args.pruner, trials=args.trials, epochs=args.epochs,
            seeds=args.seeds, seed=args.seed, ratio=args.ratio, min_ratio=args.min_ratio,
            scorer=scorer, kendall_k=args.kendall_k, workers=args.workers,
            threads=args.threads, image_size=args.image_size if data == "digits" else None,
        )
        print(f"\n[{data}] -> {config.out}")
        start = time.perf_counter()
        report = compare(config)
        print_figures(report, time.perf_counter() - start)


if __name__ == "__main__":
    main()
