"""``fxprune train-prune``: complexity-aware training with pruning.

The model contract: train-prune builds MODEL for the dataset's number of classes, so
MODEL is ``fxprune:NAME``, ``torchvision:NAME`` or a file whose ``build_model`` (or the
``path.py:name`` it names) takes a ``num_classes`` keyword, e.g.
``def build_model(num_classes=10): ...``. A ready-built module-level ``model`` cannot be
resized and is refused with that hint. The input shape is the dataset's.

The command assembles a ``TrainPruneResult`` and writes it into an output folder that
appears only once complete; an old one (``--force``) is deleted only after that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from fxprune.cli.common import (
    ForceOpt,
    OutDirOpt,
    ThreadsOpt,
    check_choice,
    command,
    output_folder,
    set_threads,
)
from fxprune.errors import ConfigError, DataError

TRAIN_MODEL_HELP = (
    "fxprune:NAME, torchvision:NAME, or path/model.py[:name] whose build_model (or name) "
    "takes num_classes, e.g. def build_model(num_classes=10). Built for the dataset's classes."
)


def register(app: typer.Typer) -> None:
    command(app, "train-prune")(train_prune_command)


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
    """An ``hpo.data.Dataset`` (one of the registry's ``DATASETS``)."""
    check_choice("--data", name, "datasets")
    try:
        from hpo.data import load_dataset
    except ImportError as exc:
        raise DataError(f"the data loaders (hpo.data) are not importable: {exc}") from exc
    return load_dataset(name, data_dir, seed=seed)


def train_prune_command(
    model: Annotated[str, typer.Argument(help=TRAIN_MODEL_HELP, show_default=False,
                                         metavar="MODEL")],
    out: OutDirOpt,
    data: Annotated[str, typer.Option("--data", help="Dataset: {datasets}.")] = "digits",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Folder with the dataset's files (cifar*, tinyimagenet, ...).",
        show_default=False)] = None,
    gamma: Annotated[float, typer.Option("--gamma", help="Pruning strength (>= 0).")] = 0.5,
    beta: Annotated[float, typer.Option(
        "--beta", help="Layer vs unit pruning in [0, 1]: 0 units only, 1 layers only.")] = 0.5,
    alpha: Annotated[float, typer.Option(
        "--alpha", help="MACs vs params in the cost, in [0, 1]: 1 MACs only.")] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(
        "--lr", help="Peak SGD learning rate (cosine schedule).")] = 0.1,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for data order, augmentation and gates.")] = 0,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train MODEL from scratch while learning which channels and layers to drop.

    Bernoulli gates with a complexity-aware cost prune channels and residual sections;
    --out gets the slim model, plan.json, history.json and a plot of MACs and accuracy
    per epoch.

    MODEL is built for the dataset's classes: a file needs build_model(num_classes).
    """
    from rich.console import Console

    from fxprune import io
    from fxprune.loading import load_model
    from fxprune.train_prune import TrainPruneOptions, check_tradeoff, train_prune

    set_threads(threads)
    check_tradeoff(gamma, beta, alpha)
    for option, value, ok in (("--epochs", epochs, epochs >= 1),
                              ("--batch-size", batch_size, batch_size >= 1),
                              ("--lr", lr, lr > 0 and lr != float("inf"))):
        if not ok:
            raise ConfigError(f"{option} {value:g}: expected a positive number")
    folder = output_folder(out, force, model, "train-prune")
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
            network, example_inputs, train, val, gamma=gamma, beta=beta, alpha=alpha,
            epochs=epochs, lr=lr, options=TrainPruneOptions(seed=seed), on_epoch=on_epoch,
        )
    write_result(result, folder, example_inputs)
    console.print(result)
    console.print(f"wrote {out}/ ({io.SLIM_FILE}, {io.META_FILE}, {io.PLAN_FILE}, "
                  f"{io.HISTORY_FILE}, {io.TRAIN_PLOT_FILE})", soft_wrap=True)


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


def write_result(result: Any, folder: Any, example_inputs: Any) -> None:
    """Fill the prepared ``io.OutputFolder``: slim model, plan, history, plot."""
    from fxprune import io

    with folder.staging() as tmp:
        io.write_slim(tmp, result.model, example_inputs, extra={
            "method": "train_prune",
            "removed_sections": result.removed_sections,
            "val_accuracy": result.val_accuracy,
        })
        io.atomic_write_text(tmp / io.PLAN_FILE, result.plan.to_json())
        io.atomic_write_json(tmp / io.HISTORY_FILE, result.history.to_dict())
        with io.atomic_path(tmp / io.TRAIN_PLOT_FILE) as plot:
            result.history.plot(plot)


__all__ = ["DatasetBatches", "load_data", "register", "train_prune_command", "write_result"]
