"""``fxprune hpo``: run, compare and report HPO with a pruned proxy network.

``fxprune.cli`` mounts ``hpo_app``; errors go through the one wrapper of
``fxprune.cli.common`` (a user mistake or a storage outage is one red line and exit 2;
Ctrl-C exits 130 and SIGTERM 143, the running trial queued again). Progress is a rich
display on a terminal and one timestamped plain line per trial and epoch otherwise (nohup,
Slurm, CI, ``| tee``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from hpo.registry import DATASETS, PRUNERS, SAMPLERS

# Defined before fxprune.cli.common is imported: that import runs fxprune/cli/__init__.py,
# which mounts this very object (``from hpo.cli import hpo_app``) while we are half-loaded.
hpo_app = typer.Typer(
    help="Hyperparameter optimisation with a pruned proxy: prune the base network at init, "
         "reinitialise the slim network, search on it, train the base with the best set.",
    no_args_is_help=True,
    add_completion=False,
)

from fxprune.cli.common import ModelArg, cli_errors, error_line

INTERRUPTED = "interrupted: the running trial is queued again; re-run the same command to resume"

DataName = Enum("DataName", {name: name for name in DATASETS}, type=str)  # type: ignore[misc]
SamplerName = Enum("SamplerName", {name: name for name in SAMPLERS}, type=str)  # type: ignore[misc]
PrunerName = Enum("PrunerName", {name: name for name in PRUNERS}, type=str)  # type: ignore[misc]


class ModeName(str, Enum):
    typical = "typical"
    proxy = "proxy"
    final = "final"


DataOpt = Annotated[DataName, typer.Option(
    help="Dataset; cifar*/tinyimagenet/mnist need --data-dir (fashion-mnist defaults to "
         "/usr/share/datasets/fashion-mnist).")]
SamplerOpt = Annotated[SamplerName, typer.Option(help="Optuna sampler.")]
PrunerOpt = Annotated[PrunerName, typer.Option(help="Optuna pruner (early stopping of trials).")]
TrialsOpt = Annotated[int, typer.Option(help="Trial budget of each search (resumes count).")]
EpochsOpt = Annotated[int, typer.Option(help="Epochs of every training run.")]
OutOpt = Annotated[Path | None, typer.Option(
    help="Run folder: storage, best.json, models, report.json, plots. Re-run to resume.",
    show_default="runs/hpo-<mode>")]
StorageOpt = Annotated[str | None, typer.Option(
    help="RDB URL (e.g. sqlite:///hpo.db) instead of the journal file in --out.")]
WorkersOpt = Annotated[int, typer.Option(help="Local worker processes sharing the study.")]
SeedsOpt = Annotated[int, typer.Option(help="Seeds of the final base-network training.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Folder holding the dataset's files (cifar10/100, tinyimagenet, mnist IDX).")]
StudyNameOpt = Annotated[str | None, typer.Option(
    help="Prefix of every study: several experiments share one database.")]
TrainSizeOpt = Annotated[int | None, typer.Option(
    help="Train on a seeded, stratified subset of this many examples.")]
EvalSizeOpt = Annotated[int | None, typer.Option(
    help="Cap the validation and test splits at this many examples (seeded, stratified).")]
HeartbeatOpt = Annotated[float, typer.Option(
    help="Seconds between liveness stamps; a trial silent for 3x this (+2 s) is reclaimed.")]
ProxyInitOpt = Annotated[str, typer.Option(
    help="Proxy weights: fan-in (the model's init rescaled to each slim layer's fan-in) or "
         "model (the model's init at the base widths).")]
ProxyLrOpt = Annotated[str, typer.Option(
    help="Proxy learning rate per layer: same (the trial's, the paper's method) or fan-in "
         "(times fan_in_base / fan_in_slim, weight decay divided by it, so each layer moves "
         "as the base layer would).")]
SpaceOpt = Annotated[Path | None, typer.Option(
    help="TOML file overriding the search space: ranges \\[low, high] or fixed values.")]
RatioOpt = Annotated[float, typer.Option(help="Fraction of channels pruned for the proxy.")]
MinRatioOpt = Annotated[float, typer.Option(help="Fraction of each layer's channels kept.")]
ScorerOpt = Annotated[str, typer.Option(help="Pruning scorer of the proxy.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of data split, initialisation, sampler.")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    help="Image side for digits (default 16) / synthetic (8) / tinyimagenet (64).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    help="Torch threads per worker (default: cores // workers; 1 on a busy machine).")]
ConfirmOpt = Annotated[int, typer.Option(
    help="Train the K best proxy sets once on the base network (validation split) and keep "
         "the best; their time counts as search time. 0: the paper's method.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


def _config(**options: Any) -> Any:
    from hpo.config import HpoConfig
    from hpo.space import SearchSpace

    space_file = options.pop("space")
    options["space"] = SearchSpace.from_toml(space_file) if space_file else SearchSpace()
    for key in ("data", "sampler", "pruner", "mode"):
        if isinstance(options.get(key), Enum):
            options[key] = options[key].value
    for key in ("data_dir", "out", "typical_from"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    return HpoConfig(**options)


@contextlib.contextmanager
def _hpo_errors() -> Iterator[None]:
    """The shared wrapper, plus SIGTERM: one line and exit 143."""
    from hpo.worker import Terminated, handle_sigterm

    handle_sigterm()
    try:
        with cli_errors(INTERRUPTED):
            try:
                yield
            except Terminated:
                error_line("terminated (SIGTERM): the running trial is queued again; re-run "
                           "the same command to resume")
                raise typer.Exit(143) from None
    finally:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _ProgressDisplay:
    """rich progress, one bar per study: trial n/N, epoch, current and best accuracy,
    elapsed and remaining time; failed or diverged trials are printed above it."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, snapshot: Any) -> None:
        task = self.tasks.get(snapshot.study)
        if task is None:
            task = self.tasks[snapshot.study] = self.progress.add_task(
                snapshot.study, total=snapshot.budget, detail="")
        self.progress.update(task, completed=snapshot.done, total=snapshot.budget,
                             detail=_detail(snapshot))
        if snapshot.event:
            from rich.text import Text

            self.progress.console.print(Text(f"{snapshot.study}: {snapshot.event}",
                                             style="yellow"))


def _detail(snapshot: Any) -> str:
    parts = []
    if snapshot.trial is not None:
        parts.append(f"trial {snapshot.trial} epoch {snapshot.epoch}/{snapshot.epochs}")
    if snapshot.value is not None:
        parts.append(f"acc {100 * snapshot.value:.1f}%")
    if snapshot.best is not None:
        parts.append(f"best {100 * snapshot.best:.1f}%")
    return " | ".join(parts)


class PlainProgress:
    """One timestamped line per finished epoch and per finished trial, for logs; trials
    running at once (``--workers``) each get theirs."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.last: dict[tuple[str, Any], tuple[Any, ...]] = {}

    def __call__(self, snapshot: Any) -> None:
        if snapshot.trial is not None and snapshot.epoch == 0 and not snapshot.event:
            return  # a trial starting: its first epoch line says enough
        # a trial's line is new when its epoch is; the counts' line when a trial finished
        where = (snapshot.study, snapshot.trial)
        key = ((snapshot.epoch, snapshot.event) if snapshot.trial is not None
               else (snapshot.done, snapshot.event))
        if self.last.get(where) == key:
            return
        self.last[where] = key
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} {snapshot.study} {snapshot.done}/{snapshot.budget}"
        detail = _detail(snapshot)
        line += f" {detail}" if detail else ""
        if snapshot.event:
            line += f" | {snapshot.event}"
        print(line, file=self.stream, flush=True)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if enabled and not sys.stderr.isatty():
        yield PlainProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
    )
    with progress:
        yield _ProgressDisplay(progress)


def _finish(report: Any, out: str, started: float) -> None:
    from rich.console import Console

    console = Console()
    console.print(report)
    console.print(f"[dim]wrote {out}/ (report.json, best.json, plots) in "
                  f"{time.perf_counter() - started:.0f}s[/]")


@hpo_app.command()
def run(
    model: ModelArg,
    data: DataOpt = "digits",  # type: ignore[assignment]
    mode: Annotated[ModeName, typer.Option(
        help="typical: search on the base network; proxy: on the pruned, reinitialised "
             "network; final: only train the base with --out's best.json.")] = ModeName.proxy,
    sampler: SamplerOpt = "tpe",  # type: ignore[assignment]
    pruner: PrunerOpt = "hyperband",  # type: ignore[assignment]
    trials: TrialsOpt = 50,
    epochs: EpochsOpt = 160,
    out: OutOpt = None,
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    seeds: SeedsOpt = 3,
    data_dir: DataDirOpt = None,
    space: SpaceOpt = None,
    ratio: RatioOpt = 0.85,
    min_ratio: MinRatioOpt = 0.15,
    scorer: ScorerOpt = "synflow",
    seed: SeedOpt = 0,
    image_size: ImageSizeOpt = None,
    threads: ThreadsOpt = None,
    study_name: StudyNameOpt = None,
    train_size: TrainSizeOpt = None,
    eval_size: EvalSizeOpt = None,
    heartbeat: HeartbeatOpt = 10.0,
    proxy_init: ProxyInitOpt = "fan-in",
    proxy_lr: ProxyLrOpt = "same",
    confirm: ConfirmOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Search hyperparameters, then train the base network with the best set.

    --mode proxy (the default) searches on the pruned, reinitialised network.
    --mode typical searches on the base network itself.
    The winner then trains the base network over --seeds seeds.
    Re-run the same command with the same --out to resume.
    """
    started = time.perf_counter()
    with _hpo_errors():
        from hpo import driver

        config = _config(model=model, data=data, mode=mode, sampler=sampler, pruner=pruner,
                         trials=trials, epochs=epochs,
                         out=out or Path(f"runs/hpo-{ModeName(mode).value}"), storage=storage,
                         workers=workers, seeds=seeds, data_dir=data_dir, space=space,
                         ratio=ratio, min_ratio=min_ratio, scorer=scorer, seed=seed,
                         image_size=image_size, threads=threads, study_name=study_name,
                         train_size=train_size, eval_size=eval_size, heartbeat=heartbeat,
                         proxy_init=proxy_init, proxy_lr=proxy_lr, confirm=confirm)
        with _progress(enabled=not quiet) as progress:
            report = driver.run(config, progress)
    _finish(report, config.out, started)


@hpo_app.command()
def compare(
    model: ModelArg,
    data: DataOpt = "digits",  # type: ignore[assignment]
    sampler: SamplerOpt = "tpe",  # type: ignore[assignment]
    pruner: PrunerOpt = "hyperband",  # type: ignore[assignment]
    trials: TrialsOpt = 50,
    epochs: EpochsOpt = 160,
    out: OutOpt = None,
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    seeds: SeedsOpt = 3,
    data_dir: DataDirOpt = None,
    space: SpaceOpt = None,
    ratio: RatioOpt = 0.85,
    min_ratio: MinRatioOpt = 0.15,
    scorer: ScorerOpt = "synflow",
    seed: SeedOpt = 0,
    image_size: ImageSizeOpt = None,
    kendall_k: Annotated[int, typer.Option(
        help="Shared random configurations trained on both networks for Kendall's tau "
             "(0: skip).")] = 8,
    threads: ThreadsOpt = None,
    repeats: Annotated[int, typer.Option(
        help="Independent replicates, each with its own sampler seeds; the report gives "
             "mean and 95% CI of gap, time reduction and tau.")] = 1,
    study_name: StudyNameOpt = None,
    train_size: TrainSizeOpt = None,
    eval_size: EvalSizeOpt = None,
    heartbeat: HeartbeatOpt = 10.0,
    proxy_init: ProxyInitOpt = "fan-in",
    proxy_lr: ProxyLrOpt = "same",
    confirm: ConfirmOpt = 0,
    typical_from: Annotated[Path | None, typer.Option(
        help="A finished compare folder (same model, data, sampler, trials, epochs, seeds): "
             "import its typical arm and search only the proxy, so two proxy variants are "
             "compared against the same typical winners.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Typical vs proxy HPO: time saved, accuracy gap, Kendall's tau.

    Both searches use the same sampler, trials and epochs; searches see the validation
    split, final runs report the test split; --repeats R replicates with new seeds.
    Each winner then trains the base network over --seeds seeds.
    --kendall-k shared random configurations train on both networks (rank agreement).
    """
    started = time.perf_counter()
    with _hpo_errors():
        from hpo import driver

        config = _config(model=model, data=data, mode="proxy", sampler=sampler, pruner=pruner,
                         trials=trials, epochs=epochs, out=out or Path("runs/hpo-compare"),
                         storage=storage, workers=workers, seeds=seeds, data_dir=data_dir,
                         space=space, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                         seed=seed, image_size=image_size, kendall_k=kendall_k,
                         threads=threads, repeats=repeats, study_name=study_name,
                         train_size=train_size, eval_size=eval_size, heartbeat=heartbeat,
                         proxy_init=proxy_init, proxy_lr=proxy_lr, confirm=confirm,
                         typical_from=typical_from)
        with _progress(enabled=not quiet) as progress:
            report = driver.compare(config, progress)
    _finish(report, config.out, started)


@hpo_app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by run or compare.",
                                            show_default=False)],
    storage: StorageOpt = None,
) -> None:
    """Rebuild report.json and the plots of a run folder and print its summary.

    Works on an unfinished or interrupted run too: everything is read from its storage.
    """
    started = time.perf_counter()
    with _hpo_errors():
        from hpo import driver

        config, command = driver.load_run(run_dir, storage)
        result = driver.write_run_report(config, command)
    _finish(result, str(run_dir), started)


__all__ = ["hpo_app"]
