"""Which learning rate does each network prefer? Base network vs proxy (--proxy-lr same and
fan-in), trained side by side on one grid of learning rates.

A proxy search can only pick the base network's hyperparameters if the proxy's accuracy
ranks them as the base network's does. This trains the base network, the proxy at the
trial's lr (the paper's method) and the proxy with ``--proxy-lr fan-in`` (each layer at lr
x fan_in_base / fan_in_slim, ``hpo.network``) for every lr of a log grid, the other
hyperparameters fixed, each over ``--seeds`` seeds, exactly as an HPO trial trains
(``hpo.train.train_model``, validation split), and prints the mean validation accuracy per
lr and each variant's best lr. Default: the HPO benchmark's setting (ResNet-20,
Fashion-MNIST 28x28, 3000/1000 images, 5 epochs, batch 32, weight decay 3e-4).

    .venv/bin/python benchmarks/proxy_lr_grid.py
    .venv/bin/python benchmarks/proxy_lr_grid.py --lrs 0.01,0.04,0.16 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import add_hpo_network_args

VARIANTS = ("base", "proxy same", "proxy fan-in")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_hpo_network_args(parser)
    parser.add_argument("--lrs", default="0.005,0.01,0.02,0.04,0.08,0.16")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"a subset of {', '.join(VARIANTS)} (the best-lr lines need base)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weight-decay", type=float, default=3e-4)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the runs here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from fxprune.errors import FxPruneError
    from hpo.config import HpoConfig
    from hpo.network import load_data, network_factory
    from hpo.space import HyperParams
    from hpo.train import TrainingDiverged, train_model

    torch.set_num_threads(args.threads)
    try:
        lrs = [float(lr) for lr in args.lrs.split(",")]
        config = HpoConfig(model=args.model, data=args.data, data_dir=args.data_dir,
                           out="unused", train_size=args.train_size, eval_size=args.eval_size,
                           threads=args.threads)
        data = load_data(config)
        factories = {
            "base": network_factory(config, data, "base"),
            "proxy same": network_factory(config.replace(proxy_lr="same"), data, "proxy"),
            "proxy fan-in": network_factory(config.replace(proxy_lr="fan-in"), data, "proxy"),
        }
        variants = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in variants if v not in factories]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
        factories = {v: factories[v] for v in variants}
    except (FxPruneError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"{args.model} on {args.data} ({args.train_size}/{args.eval_size} images), "
          f"{args.epochs} epochs, batch {args.batch_size}, weight decay {args.weight_decay}, "
          f"momentum 0.9, {args.seeds} seed(s) per point; validation accuracy, %", flush=True)
    runs = []
    for lr in lrs:
        point = HyperParams(lr=lr, batch_size=args.batch_size, weight_decay=args.weight_decay)
        for variant, factory in factories.items():
            for seed in range(1, args.seeds + 1):
                start = time.perf_counter()
                try:
                    result = train_model(factory.make(seed), data, point, args.epochs,
                                         seed=seed, device="cpu", lr_scales=factory.lr_scales)
                    accuracy = result.final_accuracy
                except TrainingDiverged:
                    accuracy = 0.0
                runs.append({"variant": variant, "lr": lr, "seed": seed, "accuracy": accuracy,
                             "seconds": round(time.perf_counter() - start, 1)})
                print(f"  {variant:>12} lr {lr:g} seed {seed}: {100 * accuracy:.1f}% "
                      f"({runs[-1]['seconds']}s)", flush=True)
    mean = {(v, lr): statistics.mean(r["accuracy"] for r in runs if r["variant"] == v
                                     and r["lr"] == lr) for v in factories for lr in lrs}
    print(f"\n{'lr':>8} | " + " | ".join(f"{v:>12}" for v in factories))
    for lr in lrs:
        print(f"{lr:8g} | " + " | ".join(f"{100 * mean[v, lr]:12.1f}" for v in factories))
    best = {v: max(lrs, key=lambda lr, v=v: mean[v, lr]) for v in factories}
    print(f"{'best lr':>8} | " + " | ".join(f"{best[v]:12g}" for v in factories))
    for variant in [v for v in factories if v != "base" and "base" in factories]:
        on_base = mean["base", best[variant]]
        print(f"{variant}: its best lr {best[variant]:g} gives the base network "
              f"{100 * on_base:.1f}%, {100 * (on_base - mean['base', best['base']]):+.1f} pt "
              "from the base network's own best")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
