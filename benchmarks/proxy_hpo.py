"""Typical HPO vs HPO on a pruned proxy (Lee & Yim), measured side by side in one run.

For each sampler (default: the paper's three, TPE, GP and CMA-ES, each with Hyperband)
this runs ``hpo.driver.compare`` with ``--repeats`` independent replicates on
Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, Debian ``dataset-fashion-mnist``)
and ResNet-20: searches score trials on the validation split, each arm's winner trains the
base network over ``--seeds`` seeds disjoint from the search's, on the test split; K
shared random configurations are trained on both networks (Kendall's tau). With
``--confirm K`` (default 2) the same proxy search also yields a third arm: its K best sets
train once on the base network (validation split) and the best wins, its time = proxy
search + those runs. It prints one table per sampler, per repeat and as the mean with a
95% Student-t interval, then per arm the goal check (time reduction >= 50% with |gap| <=
0.5 pt, on the means) and whether the gap's whole 95% interval lies inside +-0.5 pt.

The default budget is sized for a 2-core machine shared with other jobs (one torch
thread): full 28x28 images (at 12-16 px per-step overheads dominate and a proxy with 4%
of the MACs took 40-60% of the time), 3000 training / 1000 validation / 1000 test
examples, 20 trials x 5 epochs per search (with 10, each winner is the best of a few
mostly random points and the gap spread over -7.7...+4.4 pt), 8 final seeds (shared by
both arms; one winner's 3 seeds spread over up to 7 pt after 5 epochs on 3000 images),
K=6, 3 repeats per sampler; one sampler-repeat takes about 15 minutes on one core
(search 6-8, final runs 4, Kendall 2, confirmation 1 plus 2 of final runs when it
changes the winner). Adding seeds, repeats or K to a finished run
(same --out) trains only what is missing. It is a small proxy for the paper's setting (CIFAR,
160 epochs, 50 trials): the ratios, not the absolute accuracies, are what it measures.
Each run gets a fresh folder (pass --out to resume one, or to add repeats to it: the
studies of the repeats already done are reused). The load average before and after each
sampler is printed and saved: quote it next to the times. On a machine where
``kernel.sched_autogroup_enabled`` is 1, ``nice`` only ranks processes within their
session; start the run with ``setsid`` and ``echo -10 > /proc/PID/autogroup`` instead.

    .venv/bin/python benchmarks/proxy_hpo.py
    .venv/bin/python benchmarks/proxy_hpo.py --samplers tpe --repeats 5 --train-size 5000
    .venv/bin/python benchmarks/proxy_hpo.py --samplers tpe --out runs/a
    .venv/bin/python benchmarks/proxy_hpo.py --samplers tpe --proxy-lr fan-in --typical-from runs/a

The last command measures a proxy variant against the first run's typical arm: paired, at
about half the cost. ``--summarise F1 F2 ...`` pools runs made separately; when it mixes
repeats whose two searches shared Hyperband's brackets with older ones (brackets drawn by
study name, so one arm could be pruned harder), the shared ones are also summarised apart
(for a run written before repeats recorded this, ``fxprune hpo report F/SAMPLER`` adds it).

    .venv/bin/python benchmarks/proxy_hpo.py --summarise runs/a runs/b
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import add_hpo_network_args

from hpo.config import PROXY_INITS, PROXY_LRS
from hpo.report import ci_text, mean_ci


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_hpo_network_args(parser)
    parser.add_argument("--samplers", default="tpe,gp,cmaes")
    parser.add_argument("--pruner", default="hyperband", choices=["hyperband", "median", "none"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8, help="final base-network seeds")
    parser.add_argument("--kendall-k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.85)
    parser.add_argument("--min-ratio", type=float, default=0.15)
    parser.add_argument("--scorer", default="synflow")
    parser.add_argument("--proxy-init", default="fan-in", choices=PROXY_INITS)
    parser.add_argument("--proxy-lr", default="same", choices=PROXY_LRS,
                        help="proxy trials' learning rate per layer (hpo run --proxy-lr)")
    parser.add_argument("--confirm", type=int, default=2,
                        help="also report the proxy arm whose K best sets train once on the "
                             "base network (0: the paper's arm only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--typical-from", type=Path, default=None, metavar="FOLDER",
                        help="an earlier run of this benchmark (its --out) with the same "
                             "budget: import each sampler's typical arm, search only the "
                             "proxy, and print the gap change paired on the same typical "
                             "winners (hpo compare --typical-from)")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="FOLDER",
                        help="only print the results of earlier runs (their --out), pooled")
    parser.add_argument("--out", type=Path, default=None,
                        help="parent folder of the run folders (default: a fresh one)")
    return parser.parse_args()


def print_sampler(sampler: str, report, elapsed: float) -> dict:
    print(f"\n== {sampler} + {report.config['pruner']}: {len(report.repeats)} repeats, "
          f"{elapsed:.0f}s ==")
    print("repeat | typical test | proxy test | gap pp | typical span (compute) | "
          "proxy span (compute) | reduction | tau")
    for r in report.repeats:
        acc = {arm: "-" if r.test_accuracy.get(arm) is None
               else f"{100 * r.test_accuracy[arm]:.2f}%" for arm in ("typical", "proxy")}
        print(f"{r.repeat:6d} | {acc['typical']:>12} | {acc['proxy']:>10} | "
              f"{'-' if r.accuracy_gap is None else f'{r.accuracy_gap:+.2f}':>6} | "
              f"{r.wall_seconds['typical']:8.1f}s ({r.compute_seconds['typical']:6.1f}s) | "
              f"{r.wall_seconds['proxy']:8.1f}s ({r.compute_seconds['proxy']:6.1f}s) | "
              f"{'-' if r.time_reduction_pct is None else f'{r.time_reduction_pct:.1f}%':>9} | "
              f"{'-' if r.tau is None else f'{r.tau:.2f}'}")
    confirmed = [r for r in report.repeats if "confirm" in r.wall_seconds]
    if confirmed:
        print("repeat | confirm winner (proxy trial) | confirm test | gap pp | span | reduction")
        for r in confirmed:
            winner, gap, reduction = r.winners.get("confirm") or {}, r.gap("confirm"), \
                r.reduction("confirm")
            same = "changed" if confirm_changed(r.winners) else "same as proxy"
            acc = r.test_accuracy.get("confirm")
            print(f"{r.repeat:6d} | #{winner.get('trial')} ({same}) | "
                  f"{'-' if acc is None else f'{100 * acc:.2f}%':>12} | "
                  f"{'-' if gap is None else f'{gap:+.2f}':>6} | "
                  f"{r.wall_seconds['confirm']:.1f}s | "
                  f"{'-' if reduction is None else f'{reduction:.1f}%'}")
    stats = report.statistics()
    print(f"mean Kendall tau, 95% CI:               {ci_text(stats['kendall_tau'])}")
    met = goal_lines(stats)
    return {"sampler": sampler, "seconds": round(elapsed, 1), "statistics": stats,
            "repeats": [r.to_dict() for r in report.repeats], "goal_met": met}


ARM_STATISTICS = {"proxy": ("accuracy_gap_pp", "time_reduction_pct"),
                  "proxy + confirm": ("confirm_gap_pp", "confirm_reduction_pct")}


def confirm_changed(winners: dict) -> bool:
    """Whether confirmation picked another set than the proxy search's own winner."""
    confirm = (winners.get("confirm") or {}).get("params")
    return confirm is not None and confirm != (winners.get("proxy") or {}).get("params")


def goal_lines(stats: dict) -> dict[str, bool]:
    """Per arm (the paper's proxy, and the proxy with --confirm): gap and time reduction
    with their 95% intervals, and the goal check (reduction >= 50% and |gap| <= 0.5 pt on
    the means, and whether the gap's whole interval lies inside +-0.5 pt)."""
    met = {}
    for arm, (gap_key, reduction_key) in ARM_STATISTICS.items():
        if gap_key not in stats or not stats[gap_key]["n"]:
            continue
        gap, reduction = stats[gap_key]["mean"], stats[reduction_key]["mean"]
        met[arm] = gap is not None and reduction is not None and reduction >= 50 and abs(gap) <= 0.5
        print(f"{arm}: gap (arm - typical) {ci_text(stats[gap_key])} pp, time reduction "
              f"{ci_text(stats[reduction_key])} % (n={stats[gap_key]['n']}); goal (reduction >= 50% "
              f"and |gap| <= 0.5 pt on the means) {'met' if met[arm] else 'NOT met'}; "
              f"{_within(stats[gap_key])}")
    return met


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load average (Linux), to quote next to the times."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main() -> None:
    args = parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    import torch

    from hpo.cli import PlainProgress
    from hpo.config import HpoConfig
    from hpo.driver import compare

    parent = args.out or Path("runs/proxy_hpo_bench") / time.strftime("%Y%m%d-%H%M%S")
    print(f"proxy-HPO benchmark on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} torch thread(s)")
    print(f"model {args.model} on {args.data} {args.image_size}x{args.image_size}, "
          f"train/val/test capped at {args.train_size}/{args.eval_size}/{args.eval_size}; "
          f"{args.trials} trials x {args.epochs} epochs per search, {args.repeats} repeats, "
          f"{args.seeds} final seeds, K={args.kendall_k}; proxy = {args.scorer} ratio "
          f"{args.ratio}, min-ratio {args.min_ratio}, init {args.proxy_init}, lr {args.proxy_lr}")
    configs = {sampler: HpoConfig(
            model=args.model, data=args.data, data_dir=args.data_dir,
            out=str(parent / sampler), sampler=sampler, pruner=args.pruner,
            trials=args.trials, epochs=args.epochs, seeds=args.seeds, seed=args.seed,
            ratio=args.ratio, min_ratio=args.min_ratio, scorer=args.scorer,
            kendall_k=args.kendall_k, threads=args.threads, image_size=args.image_size,
            train_size=args.train_size, eval_size=args.eval_size, repeats=args.repeats,
            proxy_init=args.proxy_init, proxy_lr=args.proxy_lr, confirm=args.confirm,
            typical_from=None if args.typical_from is None else str(args.typical_from / sampler),
        ) for sampler in args.samplers.split(",")}
    if args.typical_from is not None:  # every sampler's source, before the first one runs
        check_sources(configs.values())
    results = []
    for sampler, config in configs.items():
        load_before = load_average()
        start = time.perf_counter()
        report = compare(config, PlainProgress(sys.stdout))  # one line per epoch and trial
        result = print_sampler(sampler, report, time.perf_counter() - start)
        result["load_average"] = {"before": load_before, "after": load_average()}
        print(f"load average (1, 5, 15 min) before {load_before}, after {load_average()}")
        if args.typical_from is not None:
            result["paired"] = print_paired(result, args.typical_from)
        results.append(result)
        (parent / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    if len(results) > 1:
        print_pooled(results)
    print(f"\nwrote {parent / 'benchmark.json'}")


def print_pooled(results: list[dict]) -> dict:
    """Every repeat of every sampler as one sample: does proxy HPO pick hyperparameters as
    good as typical HPO, whatever the sampler? (Repeats are independent across samplers:
    their seeds differ per sampler.)"""
    repeats = [r for result in results for r in result["repeats"]]
    pooled = {key: mean_ci([r.get(key) for r in repeats])
              for keys in ARM_STATISTICS.values() for key in keys}
    names = "+".join(dict.fromkeys(result["sampler"] for result in results))
    print(f"\n== pooled over {names}: {len(repeats)} repeats ==")
    goal_lines(pooled)
    for arm, (gap_key, _) in ARM_STATISTICS.items():  # robust to one search that failed outright
        gaps = sorted(r[gap_key] for r in repeats if r.get(gap_key) is not None)
        if gaps:
            print(f"{arm}: median gap {statistics.median(gaps):+.2f} pp; {sum(g < -0.5 for g in gaps)} "
                  f"of {len(gaps)} repeats below -0.5 pt, {sum(g > 0.5 for g in gaps)} above +0.5 pt; "
                  f"range {gaps[0]:+.2f} to {gaps[-1]:+.2f}")
    shared = [r for r in repeats if r.get("shared_brackets") is True]
    by_name = sum(r.get("shared_brackets") is False for r in repeats)
    if shared and by_name:  # older runs mixed in: the like-for-like subset
        unknown = len(repeats) - len(shared) - by_name
        print(f"\n-- the {len(shared)} of {len(repeats)} repeats whose two searches shared "
              f"Hyperband's brackets ({by_name} drew them by study name"
              f"{f', {unknown} not recorded' if unknown else ''}) --")
        goal_lines({key: mean_ci([r.get(key) for r in shared])
                    for keys in ARM_STATISTICS.values() for key in keys})
    paired = [r["confirm_gap_pp"] - r["accuracy_gap_pp"] for r in repeats
              if r.get("confirm_gap_pp") is not None and r.get("accuracy_gap_pp") is not None]
    if paired:  # the same searches and typical winners: only the proxy arm's choice differs
        changed = sum(confirm_changed(r["winners"]) for r in repeats)
        print(f"confirm - proxy, paired on the same searches: {ci_text(mean_ci(paired))} pp "
              f"(n={len(paired)}; confirmation changed the winner in {changed})")
    return pooled


def check_sources(configs) -> None:
    """``--typical-from``: one line and exit 2 if a sampler's source cannot be imported."""
    from fxprune.errors import FxPruneError
    from hpo.reuse import plan_import

    for config in configs:
        try:
            plan_import(config, target=False)
        except FxPruneError as err:
            sys.exit(f"error: {err}")


def print_paired(result: dict, source: Path) -> dict:
    """With ``--typical-from``: per arm, this run's gap minus the source run's, repeat by
    repeat (the same typical winner and final seeds, so only the proxy variant differs).
    Time reductions are not compared: the typical arm's time was measured in that run."""
    try:
        earlier = next(r for r in json.loads((source / "benchmark.json").read_text())
                       if r["sampler"] == result["sampler"])
    except (OSError, ValueError, StopIteration):
        print(f"paired: no {result['sampler']} result in {source / 'benchmark.json'}")
        return {}
    before = {r["repeat"]: r for r in earlier["repeats"]}
    paired = {}
    for arm, (gap_key, _) in ARM_STATISTICS.items():
        diffs = [r[gap_key] - before[r["repeat"]][gap_key] for r in result["repeats"]
                 if r.get(gap_key) is not None and before.get(r["repeat"], {}).get(gap_key)
                 is not None]
        if diffs:
            paired[arm] = mean_ci(diffs)
            print(f"{arm}: gap change against {source} (paired, same typical winners): "
                  f"{ci_text(paired[arm])} pp (n={len(diffs)}; better in "
                  f"{sum(d > 0 for d in diffs)}, worse in {sum(d < 0 for d in diffs)})")
    return paired


def _within(gap: dict, margin: float = 0.5) -> str:
    """Whether the gap's whole 95% interval lies inside +-margin (shown equal), not just
    its mean."""
    if gap["ci_low"] is None:
        return f"gap interval inside +-{margin} pt: not enough repeats"
    inside = -margin <= gap["ci_low"] and gap["ci_high"] <= margin
    return (f"gap interval inside +-{margin} pt: {'yes' if inside else 'no'} "
            f"(half-width {(gap['ci_high'] - gap['ci_low']) / 2:.2f} pt)")


def summarise(folders: list[Path]) -> None:
    """``--summarise F1 F2 ...``: pool the benchmark.json of runs made separately."""
    results = [_with_brackets(r, folder) for folder in folders for r in _results_of(folder)]
    for result in results:
        stats = result["statistics"]
        print(f"{result['sampler']:>6}: {len(result['repeats'])} repeats, load "
              f"{result.get('load_average')}")
        goal_lines(stats)
    print_pooled(results)


def _results_of(folder: Path) -> list[dict]:
    """A finished run's benchmark.json, or one line and exit 1."""
    try:
        return json.loads((folder / "benchmark.json").read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"error: {folder} is not a finished run of this benchmark ({err})")


def _with_brackets(result: dict, folder: Path) -> dict:
    """A run written before repeats recorded ``shared_brackets``: take it from the sampler's
    report.json once ``fxprune hpo report FOLDER/SAMPLER`` has rebuilt that from storage."""
    if all("shared_brackets" in r for r in result["repeats"]):
        return result
    try:
        rebuilt = json.loads((folder / result["sampler"] / "report.json").read_text())
        shared = {r["repeat"]: r.get("shared_brackets") for r in rebuilt["repeats"]}
    except (OSError, ValueError, KeyError, TypeError):
        return result
    return {**result, "repeats": [{**r, "shared_brackets": shared.get(r["repeat"])}
                                  if "shared_brackets" not in r else r
                                  for r in result["repeats"]]}


if __name__ == "__main__":
    main()
