"""Complexity-aware training (``fxprune.train_prune``) against pruning at initialisation.

For each model, on scikit-learn's digits (upscaled, 3 channels; no download), trained
side by side for the same epochs with the same SGD schedule:

* dense      the unpruned network (reference accuracy);
* train-prune  ``fxprune.train_prune``: units and residual sections removed during training;
* <scorer>@init  ``fxprune.prune(model, x, ratio=r, scorer=...)`` at initialisation, with ``r``
  chosen by bisection so that its MACs match the train-prune result, then trained.

Prints one table: validation accuracy, MACs and params (and their reductions), residual
sections removed, wall time. Run from the repository root::

    .venv/bin/python benchmarks/train_prune.py --threads 1    # ResNet-20, gamma 0.5 and 2, ~5 min
    .venv/bin/python benchmarks/train_prune.py --threads 1 --models resnet56 --lr 0.02 --gamma 0.5

(ResNet-56 needs the lower learning rate: at 0.1 even the dense net barely trains in the
first epochs on digits, and gates learning on an untrained net prune it to nothing.)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxprune
from fxprune.cli.train import DatasetBatches
from fxprune.errors import ConfigError
from fxprune.models import create_model
from fxprune.scoring import get_scorer
from fxprune.train_prune import TrainPruneOptions, train_prune
from hpo.data import load_dataset


@dataclass
class Row:
    model: str
    method: str
    accuracy: float
    macs: int
    params: int
    dense_macs: int
    dense_params: int
    sections_removed: str
    seconds: float


def train_plain(
    model: torch.nn.Module,
    train: DatasetBatches,
    val: DatasetBatches,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> float:
    """Nesterov SGD, cosine schedule per step, cross-entropy; returns val accuracy."""
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    total, step = epochs * len(train), 0
    for _ in range(epochs):
        model.train()
        for x, y in train:
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return accuracy(model, val)


def accuracy(model: torch.nn.Module, val: DatasetBatches) -> float:
    model.eval()
    correct = count = 0
    with torch.no_grad():
        for x, y in val:
            correct += int((model(x).argmax(1) == y).sum())
            count += len(y)
    return correct / count


def matched_ratio(
    model: torch.nn.Module, x: torch.Tensor, target_macs: int, scorer: str
) -> fxprune.PruneResult:
    """Bisection on ``ratio`` so that the pruned MACs come closest to ``target_macs``."""
    graph = fxprune.analyze(model, x)
    low, high, best = 0.0, 0.99, None
    for _ in range(14):
        mid = (low + high) / 2
        result = fxprune.prune(model, x, ratio=mid, scorer=scorer, graph=graph)
        if best is None or abs(result.macs_after - target_macs) < abs(
            best.macs_after - target_macs
        ):
            best = result
        if result.macs_after > target_macs:
            low = mid
        else:
            high = mid
    return best


def run_model(name: str, args: argparse.Namespace, data, scorer: str) -> list[Row]:
    x = torch.randn(data.input_shape)
    val = DatasetBatches(data, "val", 512, train=False)

    def train() -> DatasetBatches:
        """Every run sees the same batches in the same order."""
        return DatasetBatches(data, "train", args.batch_size, train=True, seed=args.seed)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return create_model(name, num_classes=data.num_classes)

    dense_report = fxprune.macs_report(fresh(), x)
    rows = []

    def row(method, acc, macs, params, removed, seconds):
        rows.append(
            Row(
                name,
                method,
                acc,
                macs,
                params,
                dense_report.macs,
                dense_report.params,
                removed,
                seconds,
            )
        )
        print(
            f"  {name:9s} {method:22s} acc {acc:.2%}  MACs {macs / 1e6:.2f}M  "
            f"params {params / 1e3:.1f}k  ({seconds:.0f}s)",
            flush=True,
        )

    if not args.no_dense:
        started = time.perf_counter()
        model = fresh()
        acc = train_plain(model, train(), val, args.epochs, args.lr, args.weight_decay)
        row(
            "dense", acc, dense_report.macs, dense_report.params, "-", time.perf_counter() - started
        )

    for gamma in args.gamma:
        started = time.perf_counter()
        result = train_prune(
            fresh(),
            x,
            train(),
            val,
            gamma=gamma,
            beta=args.beta,
            alpha=args.alpha,
            epochs=args.epochs,
            lr=args.lr,
            options=TrainPruneOptions(weight_decay=args.weight_decay, seed=args.seed),
        )
        sections = result.plan.summary["sections_before"]
        row(
            f"train-prune g={gamma:g}",
            result.val_accuracy,
            result.macs_after,
            result.params_after,
            f"{len(result.removed_sections)}/{sections}",
            time.perf_counter() - started,
        )

        started = time.perf_counter()
        pruned = matched_ratio(fresh(), x, result.macs_after, scorer)
        acc = train_plain(pruned.model, train(), val, args.epochs, args.lr, args.weight_decay)
        row(
            f"{scorer}@init r={pruned.plan.settings['ratio']:.3f}",
            acc,
            pruned.macs_after,
            pruned.params_after,
            f"0/{sections}",
            time.perf_counter() - started,
        )
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'model':9s} | {'method':22s} | {'val acc':>7s} | {'MACs':>8s} | {'MACs red':>8s} | "
        f"{'params':>8s} | {'par red':>7s} | {'layers removed':>14s} | {'time':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.model:9s} | {r.method:22s} | {r.accuracy:7.2%} | {r.macs / 1e6:7.2f}M | "
            f"{r.dense_macs / max(1, r.macs):7.2f}x | {r.params / 1e3:7.1f}k | "
            f"{r.dense_params / max(1, r.params):6.2f}x | {r.sections_removed:>14s} | "
            f"{r.seconds:5.0f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="resnet20", help="comma separated, e.g. resnet20,resnet56"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--gamma",
        type=lambda t: [float(g) for g in t.split(",")],
        default=[0.5, 2.0],
        help="comma separated pruning strengths, one train-prune run each",
    )
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--scorer", default="synflow", help="baseline scorer (falls back to l1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = args.scorer
    try:
        get_scorer(scorer)
    except ConfigError:
        print(f"note: scorer {scorer!r} is not available in this checkout; using 'l1' instead")
        scorer = "l1"
    data = load_dataset("digits", image_size=args.image_size, seed=args.seed)
    print(
        f"digits {args.image_size}px: {len(data.train)} train / {len(data.val)} val, "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, gamma {args.gamma}, "
        f"beta {args.beta}, alpha {args.alpha}, torch threads {torch.get_num_threads()}"
    )
    rows: list[Row] = []
    for name in args.models.split(","):
        rows += run_model(name.strip(), args, data, scorer)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
