"""The ``fxprune train-prune`` command: complexity-aware training with pruning.

A plain function with ``Annotated`` typer options; the main app registers it::

    app.command("train-prune")(train_prune_command)

It assembles a ``TrainPruneResult`` and writes it; every failure is an ``FxPruneError``
(``ConfigError`` for options, ``DataError`` for data) that the app's wrapper turns into
one line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from fxprune.errors import ConfigError, DataError

MODEL_HELP = "MODEL spec: file.py[:name], torchvision:NAME or fxprune:NAME (e.g. fxprune:resnet20)."
DATA_CHOICES = ("digits", "cifar10", "cifar100", "synthetic")
HISTORY_FILE = "history.json"
PLAN_FILE = "plan.json"
PLOT_FILE = "train_prune.png"


class DatasetBatches:
    """Re-iterable ``(inputs, targets)`` batches over one split of an ``hpo.data.Dataset``;
    the training split is reshuffled and augmented every pass from a seeded generator."""

    def __init__(self, dataset: Any, split: str, batch_size: int, *, train: bool, seed: int = 0):
        self.dataset = dataset
        self.split = split
        self.batch_size = batch_size
        self.train = train
        self.size = len(dataset.train if split == "train" else dataset.val)
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator:
        import torch

        order = (
            torch.randperm(self.size, generator=self.generator)
            if self.train
            else torch.arange(self.size)
        )
        for start in range(0, self.size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.dataset.batch(self.split, index, self.generator if self.train else None)


def load_data(name: str, data_dir: Path | None, seed: int = 0) -> Any:
    """An ``hpo.data.Dataset`` (digits, cifar10/100 from a local folder, synthetic)."""
    if name not in DATA_CHOICES:
        raise ConfigError(f"unknown --data {name!r}; choose one of {', '.join(DATA_CHOICES)}")
    try:
        from hpo.data import load_dataset
    except ImportError as exc:
        raise DataError(f"the data loaders (hpo.data) are not importable: {exc}") from exc
    return load_dataset(name, data_dir, seed=seed)


def train_prune_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write.", show_default=False)
    ],
    data: Annotated[
        str, typer.Option("--data", help="digits, cifar10, cifar100 or synthetic.")
    ] = "digits",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder with the CIFAR python-pickle batches.")
    ] = None,
    gamma: Annotated[float, typer.Option("--gamma", help="Pruning strength (>= 0).")] = 0.5,
    beta: Annotated[
        float,
        typer.Option(
            "--beta", help="Layer vs unit pruning in [0, 1]: 0 units only, 1 layers only."
        ),
    ] = 0.5,
    alpha: Annotated[
        float, typer.Option("--alpha", help="MACs vs params in the cost, in [0, 1]: 1 MACs only.")
    ] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 64,
    lr: Annotated[
        float, typer.Option("--lr", help="Peak SGD learning rate (cosine schedule).")
    ] = 0.1,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for data order, augmentation and gates.")
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Train MODEL from scratch while learning which channels and residual sections to
    drop (Bernoulli gates, complexity-aware cost); write the slim model, plan.json,
    history.json and a plot of MACs and accuracy per epoch into --out."""
    from rich.console import Console

    from fxprune.loading import load_model
    from fxprune.train_prune import TrainPruneOptions, check_tradeoff, train_prune

    check_tradeoff(gamma, beta, alpha)
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} already exists; pass --force to replace it")
    dataset = load_data(data, data_dir, seed)
    network, example_inputs = load_model(
        model, input_shape=dataset.input_shape, num_classes=dataset.num_classes
    )
    train = DatasetBatches(dataset, "train", batch_size, train=True, seed=seed)
    val = DatasetBatches(dataset, "val", max(256, batch_size), train=False)

    console = Console()
    with _progress(console) as progress:
        task = progress.add_task(f"train-prune {model} on {data}", total=epochs, stats="warming up")

        def on_epoch(record) -> None:
            progress.update(task, completed=record.epoch, stats=_stats_line(record))

        result = train_prune(
            network,
            example_inputs,
            train,
            val,
            gamma=gamma,
            beta=beta,
            alpha=alpha,
            epochs=epochs,
            lr=lr,
            options=TrainPruneOptions(seed=seed),
            on_epoch=on_epoch,
        )
    write_result(result, out, example_inputs, force=force)
    console.print(result)
    console.print(f"wrote {out}/ (slim model, {PLAN_FILE}, {HISTORY_FILE}, {PLOT_FILE})")


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )


def _stats_line(record) -> str:
    return (
        f"acc {record.val_accuracy:.2%}  MACs {record.macs / 1e6:.2f}M  "
        f"params {record.params / 1e3:.1f}k  units {record.units}  layers {record.sections}"
    )


def write_result(result: Any, out: Path, example_inputs: Any, *, force: bool = False) -> None:
    """Write everything into a temporary sibling folder, then rename it to ``out``."""
    from fxprune.api import save_slim

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_slim(
            result.model,
            tmp,
            example_inputs,
            extra={
                "method": "train_prune",
                "removed_sections": result.removed_sections,
                "val_accuracy": result.val_accuracy,
            },
        )
        result.plan.save(tmp / PLAN_FILE)
        (tmp / HISTORY_FILE).write_text(json.dumps(result.history.to_dict(), indent=1))
        result.history.plot(tmp / PLOT_FILE)
        if out.exists():
            if not force:
                raise ConfigError(f"--out {out} already exists; pass --force to replace it")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["train_prune_command", "DatasetBatches", "load_data", "write_result", "DATA_CHOICES"]
