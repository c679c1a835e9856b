"""Run HPO studies on the base network or on its pruned proxy, and compare the two.

The method (Lee & Yim, "Hyperparameter Optimization with Neural Network Pruning", §3, §5):
prune the base network at initialisation, REINITIALISE the slim network, run HPO on it,
then train the base network with the best set found. Modes:

* ``typical``: HPO on the base network (the reference);
* ``proxy``: HPO on ``fxprune.prune(base, ratio=0.85, min_ratio=0.15, scorer="synflow")``.
  The base is pruned once, at its seeded initialisation; every trial then trains a copy
  whose weights are reset (``reset_parameters()`` on every submodule, seeded per trial),
  since weights inherited from pruning would tune hyperparameters for fine-tuning;
* ``final``: train the base network with the best set of a finished run over ``seeds``.

``run`` does a search followed by the final training; ``compare`` runs ``typical`` and
``proxy`` with the same sampler, seed, trial budget and epochs, trains the base network with
each winner, and scores a shared set of K random configurations on both networks to report
Kendall's tau between proxy and base accuracies.

Storage and resume
    Every stage is an Optuna study in one storage: by default an append-only journal file
    (``journal.log``, ``JournalFileBackend``) in the run folder, which tolerates several
    writer processes where plain SQLite does not; ``--storage URL`` takes an RDB URL. Final
    runs and the K shared configurations are *planned* studies whose trials are enqueued up
    front, so they resume like searches. Re-running with the same folder resumes: the budget
    counts COMPLETE, PRUNED and FAIL trials already there plus live RUNNING ones. A RUNNING
    trial whose process is gone (same host, pid dead or reused, or this very process no
    longer running it; or never stamped with an owner and over a minute old) is marked FAIL
    with ``reason`` "interrupted ..." and its params are re-enqueued; such interrupted
    trials do not count toward the budget, so a study killed at any point ends with exactly
    ``trials`` finished trials, none lost and none repeated. A torn last line of the journal
    (a kill mid-write) is cut off before resuming. A study created with different options
    (model, data, epochs, space, ...) is refused with a ``ConfigError`` rather than mixed.

Reproducible sampling
    The sampler is rebuilt before each new trial with a seed derived from ``seed`` and the
    number of trials already in the study, so a resumed study asks for the same points an
    uninterrupted one would have, and local workers never draw identical points.

Workers
    ``workers=N`` starts N local processes (multiprocessing, spawn) on the same storage;
    each takes ``cores // N`` intra-op threads (``threads`` overrides: on a machine shared
    with other jobs, 1 thread avoids OpenMP oversubscription, which can cost 10x). A trial
    is claimed under an exclusive file lock in the run folder, so the budget is never
    overrun by racing workers.

Failures
    A trial whose loss turns NaN/inf is recorded as PRUNED with value 0.0 at the epoch where
    it diverged (so TPE learns the region is bad) and ``reason`` "diverged: ..."; an
    out-of-memory error or any other exception is recorded as FAIL with its ``reason``; the
    study goes on. An ``FxPruneError`` (a user mistake such as a corrupt data file) fails the
    trial and stops the run with its one-line message.

Hyperband and the sampler
    Optuna's ``HyperbandPruner`` hands every sampler a filtered study holding only the
    trials of the current trial's bracket (``optuna.pruners._filter_study``). With the
    paper's 160 epochs Optuna's defaults make 5 brackets, so 50 trials leave each sampler
    about 10 observations per bracket, most of them inside TPE's random start-up phase:
    the "Bayesian" search is effectively random. The defaults here keep the sampler useful:
    reduction factor 3 and a ``min_resource`` chosen for the budget so there is one bracket
    (plain successive halving; the sampler sees every trial) below 20 trials, two brackets
    below 60 and three from 60 on (``hyperband_settings``); the samplers' start-up phase is
    ``min(10, max(3, trials // 10))`` trials. With fewer than 2 epochs nothing is pruned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fxprune.errors import ConfigError, FxPruneError
from hpo.report import (
    BEST_FILE,
    FinalSummary,
    HpoReport,
    ProxyInfo,
    RankSummary,
    StudySummary,
    TrialRecord,
    atomic_write,
    atomic_write_json,
)
from hpo.space import HyperParams, SearchSpace

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from hpo.data import Dataset

logger = logging.getLogger("hpo")

MODES = ("typical", "proxy", "final")
CONFIG_FILE = "config.json"
JOURNAL_FILE = "journal.log"
CLAIM_LOCK_FILE = ".claim.lock"
HYPERBAND_REDUCTION_FACTOR = 3
INTERRUPTED = "interrupted"
UNSTAMPED_GRACE_S = 60.0  # a RUNNING trial with no owner yet, older than this, is abandoned

# --- registries: sampler and pruner by name ----------------------------------------------------

SamplerFactory = Callable[[int, int], "optuna.samplers.BaseSampler"]  # (seed, trials)
PrunerFactory = Callable[[int, int], "optuna.pruners.BasePruner"]  # (trials, epochs)
SAMPLERS: dict[str, SamplerFactory] = {}
PRUNERS: dict[str, PrunerFactory] = {}


def _register(table: dict[str, Any], name: str) -> Callable[[Any], Any]:
    def decorate(factory: Any) -> Any:
        if name in table:
            raise ConfigError(f"{name!r} is registered twice")
        table[name] = factory
        return factory

    return decorate


def startup_trials(trials: int) -> int:
    """Random start-up trials of the model-based samplers."""
    return min(10, max(3, trials // 10))


@_register(SAMPLERS, "tpe")
def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials),
                                      multivariate=True, warn_independent_sampling=False)


@_register(SAMPLERS, "gp")
def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(trials),
                                     warn_independent_sampling=False)


@_register(SAMPLERS, "cmaes")
def _cmaes(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(trials),
                                        warn_independent_sampling=False)


@_register(SAMPLERS, "random")
def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def hyperband_settings(trials: int, epochs: int) -> dict[str, int]:
    """Brackets and ``min_resource`` for the budget (see the module docstring): with
    ``B`` brackets, ``min_resource = epochs // 3**B + 1`` gives Optuna exactly ``B``."""
    wanted = 1 if trials < 20 else 2 if trials < 60 else 3
    possible = 1  # floor(log3(epochs)) + 1, in integers
    while HYPERBAND_REDUCTION_FACTOR ** possible <= epochs:
        possible += 1
    brackets = min(wanted, possible)
    return {"brackets": brackets,
            "min_resource": epochs // HYPERBAND_REDUCTION_FACTOR ** brackets + 1,
            "max_resource": epochs, "reduction_factor": HYPERBAND_REDUCTION_FACTOR}


@_register(PRUNERS, "hyperband")
def _hyperband(trials: int, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    settings = hyperband_settings(trials, epochs)
    return optuna.pruners.HyperbandPruner(
        min_resource=settings["min_resource"], max_resource=epochs,
        reduction_factor=settings["reduction_factor"],
    )


@_register(PRUNERS, "median")
def _median(trials: int, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 5)),
                                       n_warmup_steps=max(1, epochs // 4))


@_register(PRUNERS, "none")
def _no_pruner(trials: int, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HpoConfig:
    """Everything a run needs; round-trips through ``to_dict``/``from_dict``."""

    model: str
    data: str = "digits"
    out: str = "runs/hpo"
    mode: str = "proxy"
    sampler: str = "tpe"
    pruner: str = "hyperband"
    trials: int = 50
    epochs: int = 160
    seeds: int = 3
    seed: int = 0
    workers: int = 1
    ratio: float = 0.85
    min_ratio: float = 0.15
    scorer: str = "synflow"
    space: SearchSpace = field(default_factory=SearchSpace)
    kendall_k: int = 8
    data_dir: str | None = None
    image_size: int | None = None
    storage: str | None = None
    threads: int | None = None  # torch intra-op threads per worker; None: cores // workers

    def __post_init__(self) -> None:
        if isinstance(self.space, dict):
            object.__setattr__(self, "space", SearchSpace.from_dict(self.space))
        checks = [
            (self.mode in MODES, f"mode {self.mode!r}: choose one of {', '.join(MODES)}"),
            (self.sampler in SAMPLERS,
             f"sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}"),
            (self.pruner in PRUNERS, f"pruner {self.pruner!r}: choose one of {', '.join(PRUNERS)}"),
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.seeds >= 0, f"--seeds must be 0 or more, got {self.seeds}"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.threads is None or self.threads >= 1,
             f"--threads must be at least 1, got {self.threads}"),
            (0.0 < self.ratio < 1.0, f"--ratio must be in (0, 1), got {self.ratio}"),
            (0.0 < self.min_ratio <= 1.0, f"--min-ratio must be in (0, 1], got {self.min_ratio}"),
            (self.kendall_k == 0 or self.kendall_k >= 2,
             f"--kendall-k must be 0 (off) or at least 2, got {self.kendall_k}"),
            (self.storage is None or "://" in self.storage,
             f"--storage {self.storage!r} is not a database URL (e.g. sqlite:///hpo.db)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["space"] = self.space.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HpoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> HpoConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self, role: str) -> dict[str, Any]:
        """The options a study's results depend on: resuming with others is refused."""
        keys = ["model", "data", "data_dir", "image_size", "epochs", "seed"]
        data = {k: getattr(self, k) for k in keys}
        data["space"] = self.space.to_dict()
        if role == "proxy":
            data.update(ratio=self.ratio, min_ratio=self.min_ratio, scorer=self.scorer)
        return data


@dataclass(frozen=True)
class Job:
    """One study to run: a search (``budget`` trials, sampler + pruner) or a planned list."""

    name: str
    role: str  # "base" or "proxy"
    kind: str  # "search", "final" or "rank"
    budget: int
    planned: tuple[dict[str, Any], ...] = ()  # user_attrs of each planned trial
    save_models: bool = False
    source: str | None = None  # for finals: the study whose best set is trained

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**{**data, "planned": tuple(data["planned"])})


@dataclass(frozen=True)
class Snapshot:
    """Progress of the running study, for a progress display."""

    study: str
    done: int
    budget: int
    trial: int | None = None
    epoch: int = 0
    epochs: int = 0
    value: float | None = None
    best: float | None = None
    event: str | None = None  # a line worth printing: a failed or diverged trial


ProgressCallback = Callable[[Snapshot], None]


# --- storage, locks, ownership -------------------------------------------------------------------


def open_storage(config: HpoConfig) -> optuna.storages.BaseStorage:
    """The RDB storage of ``--storage``, else the journal file in the run folder."""
    import optuna

    if config.storage is not None:
        try:
            return optuna.storages.RDBStorage(config.storage)
        except Exception as err:  # noqa: BLE001 - sqlalchemy raises many kinds
            raise ConfigError(f"cannot open storage {mask_url(config.storage)}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(config.out) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def repair_journal(path: Path) -> bool:
    """Cut a torn last line (a process killed mid-append) off the journal; True if cut.
    Called only before any worker of this run starts, holding the journal's own lock."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return False
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as journal:
            journal.seek(-1, os.SEEK_END)
            if journal.read(1) == b"\n":
                return False
            data = path.read_bytes()
            journal.truncate(data.rfind(b"\n") + 1)
            logger.warning("%s: cut a torn last line left by a killed process", path)
            return True
    finally:
        lock.release()


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for files and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _claim_lock(out: Path) -> Iterator[None]:
    """Exclusive lock of the run folder while a trial is claimed (released if we die)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: workers are serialised by the storage alone
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CLAIM_LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ACTIVE_TRIALS: set[int] = set()  # storage trial ids this process is running right now


def _process_start(pid: int) -> str | None:
    """Start time of a live process (``/proc/<pid>/stat`` field 22); None if dead/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _owner_alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the process running ``trial`` may still be alive."""
    owner = trial.user_attrs.get("owner")
    if owner is None:  # asked for but not yet stamped: stale only once clearly abandoned
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() < UNSTAMPED_GRACE_S
    if owner.get("host") != socket.gethostname():
        return True  # another machine's worker: we cannot tell, so we leave it alone
    pid = int(owner.get("pid", -1))
    if pid == os.getpid() and owner.get("start") == _process_start(pid):
        return trial._trial_id in _ACTIVE_TRIALS
    if Path("/proc").is_dir():  # dead, zombie, or the pid reused by a later process
        start = _process_start(pid)
        return start is not None and start == owner.get("start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    return str(trial.user_attrs.get("reason", "")).startswith(INTERRUPTED)


def _retire_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str) -> None:
    """Mark ``trial`` FAIL (reason "interrupted ...") and enqueue its params and plan again."""
    from optuna.trial import TrialState

    storage, trial_id = study._storage, trial._trial_id
    storage.set_trial_user_attr(trial_id, "reason", f"{INTERRUPTED}: {why}")
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    keep = {k: v for k, v in trial.user_attrs.items()
            if k in ("seed", "plan_key", "hyperparams", "retries")}
    keep["retries"] = int(keep.get("retries", 0)) + 1
    keep["retry_of"] = trial.number
    study.enqueue_trial(dict(trial.params), user_attrs=keep)
    logger.warning("trial %d of %s interrupted (%s); its params are queued again",
                   trial.number, study.study_name, why)


def _recover_stale(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if not _owner_alive(t)]
    for trial in stale:
        _retire_interrupted(study, trial, "its process is gone")
    return len(stale)


def _counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not _is_interrupted(trial)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _finished(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state.is_finished() and not _is_interrupted(trial)


def _work_left(study: optuna.Study, job: Job) -> bool:
    from optuna.trial import TrialState

    if job.kind != "search":
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    return sum(map(_counts_toward_budget, study.get_trials(deepcopy=False))) < job.budget


def _claim(study: optuna.Study, job: Job, config: HpoConfig) -> optuna.Trial | None:
    """Under the folder lock: recover stale trials, check the budget, ask for a trial."""
    with _claim_lock(Path(config.out)):
        _recover_stale(study)
        if not _work_left(study, job):
            return None
        if job.kind == "search":
            existing = len(study.get_trials(deepcopy=False))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning of multivariate TPE
                study.sampler = SAMPLERS[config.sampler](
                    (config.seed * 1_000_003 + existing) % 2**31, config.trials)
        trial = study.ask()
        trial.set_user_attr("owner", _owner())
        if "seed" not in trial.user_attrs:
            trial.set_user_attr("seed", config.seed + 1 + trial.number)
        _ACTIVE_TRIALS.add(trial._trial_id)
        return trial


def _prepare_study(storage: optuna.storages.BaseStorage, job: Job,
                   config: HpoConfig) -> optuna.Study:
    """Create the study, or check that the existing one was made with the same options;
    enqueue the planned trials not yet there; recover stale RUNNING trials."""
    import optuna

    fingerprint = config.fingerprint(job.role)
    with _claim_lock(Path(config.out)):
        study = optuna.create_study(study_name=job.name, storage=storage,
                                    direction="maximize", load_if_exists=True)
        stored = study.user_attrs.get("fingerprint")
        if stored is None:
            study.set_user_attr("fingerprint", fingerprint)
            study.set_user_attr("role", job.role)
            study.set_user_attr("kind", job.kind)
            if job.source is not None:
                study.set_user_attr("source", job.source)
        elif stored != fingerprint:
            changed = sorted(k for k in set(stored) | set(fingerprint)
                             if stored.get(k) != fingerprint.get(k))
            first = changed[0]
            raise ConfigError(
                f"{config.out}: study {job.name!r} was run with {first}="
                f"{stored.get(first)!r}, this run asks {fingerprint.get(first)!r}; use the "
                "same options to resume, or another --out")
        study.set_user_attr("budget", job.budget)
        planned_keys = {t.user_attrs.get("plan_key") for t in study.get_trials(deepcopy=False)}
        for attrs in job.planned:
            if attrs["plan_key"] not in planned_keys:
                study.enqueue_trial({}, user_attrs=attrs)
        _recover_stale(study)
    return study


# --- what a trial trains -------------------------------------------------------------------


_DATA_CACHE: dict[tuple[Any, ...], Dataset] = {}


def load_data(config: HpoConfig) -> Dataset:
    """The run's dataset, cached per process (a compare loads it once, not per stage)."""
    from hpo.data import load_dataset

    key = (config.data, config.data_dir, config.seed, config.image_size)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(config.data, config.data_dir, seed=config.seed,
                                        image_size=config.image_size)
    return _DATA_CACHE[key]


class NetworkFactory:
    """Builds the network a trial trains: the base network, or the pruned proxy, each time
    with fresh weights drawn from the trial's seed."""

    def __init__(self, config: HpoConfig, data: Dataset, role: str) -> None:
        from fxprune.loading import load_model
        from hpo.train import reinitialise

        model, example_inputs = load_model(config.model, input_shape=data.input_shape,
                                           num_classes=data.num_classes)
        # The network pruned at initialisation: seeded, so every worker prunes the same.
        self.base = reinitialise(model, config.seed)
        self.template: nn.Module = self.base
        self.proxy_info: ProxyInfo | None = None
        if role == "proxy":
            import fxprune

            start = time.perf_counter()
            result = fxprune.prune(self.base, example_inputs, ratio=config.ratio,
                                   min_ratio=config.min_ratio, scorer=config.scorer)
            self.template = result.model
            self.proxy_info = ProxyInfo(
                params_before=int(result.params_before), params_after=int(result.params_after),
                flops_before=int(result.flops_before), flops_after=int(result.flops_after),
                ratio=config.ratio, min_ratio=config.min_ratio, scorer=config.scorer,
                prune_seconds=time.perf_counter() - start,
            )

    def make(self, seed: int) -> nn.Module:
        from hpo.train import reinitialise

        return reinitialise(self.template, seed)


class _TrialRunner:
    """Trains one trial's network and reports each epoch to Optuna and to the progress."""

    def __init__(self, config: HpoConfig, job: Job, study: optuna.Study,
                 progress: ProgressCallback | None) -> None:
        self.config, self.job, self.study, self.progress = config, job, study, progress
        self.data = load_data(config)
        self.factory = NetworkFactory(config, self.data, job.role)
        if self.factory.proxy_info is not None and "proxy_info" not in study.user_attrs:
            study.set_user_attr("proxy_info", dataclasses.asdict(self.factory.proxy_info))
        if "data" not in study.user_attrs:
            study.set_user_attr("data", self.data.summary())
        self.done, self.best = _progress_counts(study)

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from hpo.train import train_model

        attrs = trial.user_attrs
        if "plan_key" in attrs:  # a planned trial: the point is fixed
            hyperparams = HyperParams.from_dict(attrs["hyperparams"])
        else:
            hyperparams = self.config.space.suggest(trial)
            trial.set_user_attr("hyperparams", hyperparams.to_dict())
        seed = int(attrs["seed"])
        prunable = self.job.kind == "search"
        self._show(trial.number, 0, None)

        def on_epoch(epoch: int, accuracy: float) -> None:
            trial.report(accuracy, epoch)
            self._show(trial.number, epoch, accuracy)
            if prunable and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        model = self.factory.make(seed)
        result = train_model(model, self.data, hyperparams, self.config.epochs, seed=seed,
                             on_epoch=on_epoch)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        if self.job.save_models:
            trial.set_user_attr("model_path", _save_model(self.config, self.job, seed, model))
        return result.final_accuracy

    def _show(self, number: int | None, epoch: int, value: float | None,
              event: str | None = None) -> None:
        if self.progress is not None:
            self.progress(Snapshot(self.job.name, self.done, self.job.budget, number, epoch,
                                   self.config.epochs, value, self.best, event))

    def finished(self, event: str | None = None) -> None:
        self.done, self.best = _progress_counts(self.study)
        self._show(None, 0, None, event)


def _save_model(config: HpoConfig, job: Job, seed: int, model: nn.Module) -> str:
    import torch

    relative = f"models/{job.name}-seed{seed}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(config.out) / relative, lambda tmp: torch.save(state, tmp))
    return relative


def _progress_counts(study: optuna.Study) -> tuple[int, float | None]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sum(map(_finished, trials)), (max(values) if values else None)


def _run_trial(study: optuna.Study, trial: optuna.Trial, runner: _TrialRunner) -> None:
    """Run one claimed trial and record how it ended; only user errors and interrupts
    escape, everything else is written down and the study goes on."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from hpo.train import TrainingDiverged

    out_of_memory = tuple(t for t in (MemoryError, getattr(torch, "OutOfMemoryError", None)) if t)
    event = None
    try:
        value = runner(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    except TrainingDiverged as err:
        trial.set_user_attr("reason", str(err))
        trial.report(0.0, err.epoch)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        event = f"trial {trial.number} {err}"
    except FxPruneError as err:
        trial.set_user_attr("reason", str(err))
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except KeyboardInterrupt:
        _retire_interrupted(study, study._storage.get_trial(trial._trial_id), "stopped by the user")
        raise
    except Exception as err:  # noqa: BLE001 - recorded on the trial, the study goes on
        kind = "out of memory" if isinstance(err, out_of_memory) else type(err).__name__
        reason = f"{kind}: {' '.join(str(err).split())[:300]}"
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        event = f"trial {trial.number} failed: {reason}"
        logger.warning("%s: %s", study.study_name, event)
        if isinstance(err, out_of_memory) and torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        study.tell(trial, value, skip_if_finished=True)
    finally:
        _ACTIVE_TRIALS.discard(trial._trial_id)
    runner.finished(event)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _work(config: HpoConfig, job: Job, progress: ProgressCallback | None = None) -> None:
    """One worker: claim and run trials until the job's budget is used up."""
    import optuna

    _quiet_optuna()
    # Planned trials are never pruned, and a one-epoch run has nothing to stop early.
    prunes = job.kind == "search" and config.epochs >= 2
    pruner = PRUNERS[config.pruner if prunes else "none"](config.trials, config.epochs)
    study = optuna.load_study(study_name=job.name, storage=open_storage(config), pruner=pruner)
    runner: _TrialRunner | None = None
    while True:
        if runner is None:  # build the network only once there is work for it
            with _claim_lock(Path(config.out)):
                has_work = _work_left(study, job)
            if not has_work:
                return
            runner = _TrialRunner(config, job, study, progress)
        trial = _claim(study, job, config)
        if trial is None:
            return
        _run_trial(study, trial, runner)


def _worker_entry(config_data: dict[str, Any], job_data: dict[str, Any], errors: Any) -> None:
    """Entry point of a spawned worker process."""
    import torch

    from hpo.train import threads_per_worker

    config, job = HpoConfig.from_dict(config_data), Job.from_dict(job_data)
    torch.set_num_threads(config.threads or threads_per_worker(config.workers))
    try:
        _work(config, job)
    except FxPruneError as err:
        errors.put(str(err))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run_job(config: HpoConfig, job: Job, progress: ProgressCallback | None) -> None:
    """Run ``job`` to the end of its budget, inline or on ``config.workers`` processes; its
    wall time is added to the study's ``wall_seconds`` (kept across resumed runs)."""
    import torch

    from hpo.train import threads_per_worker

    _quiet_optuna()
    storage = open_storage(config)
    study = _prepare_study(storage, job, config)
    with _claim_lock(Path(config.out)):
        if not _work_left(study, job):
            return
    start = time.perf_counter()
    try:
        if config.workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(config.threads or threads_per_worker(1))
            try:
                _work(config, job, progress)
            finally:
                torch.set_num_threads(threads)
        else:
            _run_workers(config, job, study, progress)
    finally:
        elapsed = time.perf_counter() - start
        wall = float(study.user_attrs.get("wall_seconds", 0.0)) + elapsed
        study.set_user_attr("wall_seconds", round(wall, 3))


def _run_workers(config: HpoConfig, job: Job, study: optuna.Study,
                 progress: ProgressCallback | None) -> None:
    from optuna.trial import TrialState

    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = [context.Process(target=_worker_entry, args=(config.to_dict(), job.to_dict(),
                                                             errors), name=f"hpo-worker-{i}")
                 for i in range(config.workers)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            if progress is not None:
                trials = study.get_trials(deepcopy=False)
                running = [t for t in trials if t.state == TrialState.RUNNING]
                done, best = _progress_counts(study)
                current = running[-1] if running else None
                step = current.last_step if current is not None else None
                progress(Snapshot(
                    job.name, done, job.budget, current.number if current else None,
                    step or 0, config.epochs,
                    current.intermediate_values.get(step) if step is not None else None, best))
            for process in processes:
                process.join(timeout=1.0 / len(processes))
    except KeyboardInterrupt:
        for process in processes:  # they got the SIGINT too: let them record it
            process.join(timeout=30)
        raise
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    if messages:
        raise FxPruneError(messages[0])
    dead = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if dead:
        name, code = dead[0]
        raise FxPruneError(f"{name} exited with code {code}; re-run the same command to resume")


# --- the stages -----------------------------------------------------------------------------------


def _search_job(config: HpoConfig, mode: str) -> Job:
    return Job(name=mode, role="proxy" if mode == "proxy" else "base", kind="search",
               budget=config.trials)


def _digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _final_job(config: HpoConfig, source: str, hyperparams: HyperParams) -> Job:
    seeds = [config.seed + i for i in range(config.seeds)]
    planned = tuple({"plan_key": f"seed{s}", "seed": s, "hyperparams": hyperparams.to_dict()}
                    for s in seeds)
    return Job(name=f"final-{source}-{_digest(hyperparams.to_dict())}", role="base",
               kind="final", budget=len(planned), planned=planned, save_models=True,
               source=source)


def rank_configurations(config: HpoConfig) -> list[HyperParams]:
    """The K shared configurations: drawn by a seeded RandomSampler from the space."""
    import optuna

    _quiet_optuna()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=config.seed + 7919))
    return [config.space.suggest(study.ask()) for _ in range(config.kendall_k)]


def _rank_jobs(config: HpoConfig) -> list[Job]:
    configs = rank_configurations(config)
    planned = tuple({"plan_key": f"config{k}", "seed": config.seed + 1 + k,
                     "hyperparams": hp.to_dict()} for k, hp in enumerate(configs))
    return [Job(name=f"rank-{role}", role=role, kind="rank", budget=len(planned),
                planned=planned) for role in ("base", "proxy")]


def _best(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, HyperParams] | None:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None]
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    return best, HyperParams.from_dict(best.user_attrs["hyperparams"])


def _best_or_raise(config: HpoConfig, name: str) -> tuple[dict[str, Any], HyperParams]:
    import optuna

    study = optuna.load_study(study_name=name, storage=open_storage(config))
    found = _best(study)
    if found is None:
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        raise FxPruneError(f"study {name!r}: no trial completed ({counts}); see report.json "
                           "for the reasons, then widen --space or add --epochs")
    trial, hyperparams = found
    return {"study": name, "trial": trial.number, "value": trial.value,
            "hyperparams": hyperparams.to_dict()}, hyperparams


def _start(config: HpoConfig, command: str) -> None:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    saved = config.to_dict()
    if config.storage is not None:
        saved["storage"] = mask_url(config.storage)
    atomic_write_json(out / CONFIG_FILE, {"command": command, "config": saved})
    if config.storage is None:
        repair_journal(out / JOURNAL_FILE)


def _copy_best_model(config: HpoConfig, final_job: Job, target: str) -> None:
    import optuna

    study = optuna.load_study(study_name=final_job.name, storage=open_storage(config))
    done = [t for t in study.get_trials(deepcopy=False) if t.value is not None
            and "model_path" in t.user_attrs]
    if done:
        best = max(done, key=lambda t: (t.value, -t.number))
        source = Path(config.out) / best.user_attrs["model_path"]
        atomic_write(Path(config.out) / target, lambda tmp: shutil.copyfile(source, tmp))


def run(config: HpoConfig, progress: ProgressCallback | None = None) -> HpoReport:
    """``typical``/``proxy``: search, write best.json, train the base network with the best
    set over ``seeds`` seeds (base_model.pt); ``final``: only that last step, from the
    folder's best.json. Returns the report, also written to the folder."""
    _start(config, "run")
    out = Path(config.out)
    if config.mode == "final":
        source, hyperparams = _read_best(out)
    else:
        load_data(config)  # a data error stops the run before any study is touched
        _run_job(config, _search_job(config, config.mode), progress)
        try:
            best, hyperparams = _best_or_raise(config, config.mode)
        except FxPruneError:
            write_run_report(config, "run")
            raise
        atomic_write_json(out / BEST_FILE, {"mode": config.mode, **best})
        source = config.mode
    if config.seeds > 0:
        final_job = _final_job(config, source, hyperparams)
        _run_job(config, final_job, progress)
        _copy_best_model(config, final_job, "base_model.pt")
    return write_run_report(config, "run")


def compare(config: HpoConfig, progress: ProgressCallback | None = None) -> HpoReport:
    """Typical HPO and proxy HPO with identical settings, each winner trained on the base
    network over ``seeds`` seeds, and Kendall's tau on ``kendall_k`` shared configurations."""
    if config.seeds < 1:
        raise ConfigError("compare trains each winner on the base network: --seeds must be >= 1")
    _start(config, "compare")
    load_data(config)
    winners: dict[str, Any] = {}
    finals = []
    for mode in ("typical", "proxy"):
        _run_job(config, _search_job(config, mode), progress)
    for mode in ("typical", "proxy"):
        try:
            best, hyperparams = _best_or_raise(config, mode)
        except FxPruneError:
            write_run_report(config, "compare")
            raise
        winners[mode] = {"mode": mode, **best}
        finals.append(_final_job(config, mode, hyperparams))
    atomic_write_json(Path(config.out) / BEST_FILE, winners)
    for final_job in finals:
        _run_job(config, final_job, progress)
        _copy_best_model(config, final_job, f"base_model_{final_job.source}.pt")
    if config.kendall_k:
        for job in _rank_jobs(config):
            _run_job(config, job, progress)
    return write_run_report(config, "compare")


def _read_best(out: Path) -> tuple[str, HyperParams]:
    path = out / BEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--mode final needs {path}: run --mode typical or proxy first") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON ({err})") from None
    if isinstance(data, dict) and "hyperparams" not in data and "proxy" in data:
        data = data["proxy"]  # a compare folder: train the proxy's winner
    if not isinstance(data, dict) or not isinstance(data.get("hyperparams"), dict):
        raise ConfigError(f"{path}: expected {{'mode': ..., 'hyperparams': {{...}}}}")
    return str(data.get("mode", "proxy")), HyperParams.from_dict(data["hyperparams"])


# --- the report, rebuilt from the storage -----------------------------------------------------


def write_run_report(config: HpoConfig, kind: str) -> HpoReport:
    from hpo.report import write_report

    report = collect_report(config, kind)
    write_report(report, Path(config.out))
    return report


def load_run(out: str | Path, storage: str | None = None) -> tuple[HpoConfig, str]:
    """The config and command ("run"/"compare") saved in a run folder."""
    path = Path(out) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        config = HpoConfig.from_dict({**saved["config"], "out": str(out)})
    except FileNotFoundError:
        raise ConfigError(f"{out} is not an HPO run folder (no {CONFIG_FILE})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    if storage is not None:
        config = config.replace(storage=storage)
    elif config.storage is not None and "***" in config.storage:
        raise ConfigError(f"{out} used the storage {config.storage}: pass --storage URL")
    return config, str(saved.get("command", "run"))


def collect_report(config: HpoConfig, kind: str) -> HpoReport:
    """Summarise every study of the run folder's storage into an ``HpoReport``."""
    import optuna

    _quiet_optuna()
    storage = open_storage(config)
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    search, finals, proxy_info = [], [], None
    loaded = {name: optuna.load_study(study_name=name, storage=storage) for name in studies}
    for name in ("typical", "proxy"):
        if name in loaded:
            search.append(_summarise_search(loaded[name], config))
            info = loaded[name].user_attrs.get("proxy_info")
            if info is not None:
                proxy_info = ProxyInfo(**info)
    for source in ("typical", "proxy"):
        final = _summarise_final(loaded, source, search)
        if final is not None:
            finals.append(final)
    rank = None
    if "rank-base" in loaded and "rank-proxy" in loaded:
        rank = _summarise_rank(loaded["rank-base"], loaded["rank-proxy"])
        info = loaded["rank-proxy"].user_attrs.get("proxy_info")
        if proxy_info is None and info is not None:
            proxy_info = ProxyInfo(**info)
    data_summary = next((s.user_attrs["data"] for s in loaded.values() if "data" in s.user_attrs),
                        {"name": config.data})
    hyperband = (hyperband_settings(config.trials, config.epochs)
                 if config.pruner == "hyperband" and config.epochs >= 2 else None)
    saved = config.to_dict()
    if config.storage is not None:
        saved["storage"] = mask_url(config.storage)
    return HpoReport(kind=kind, config=saved, data=data_summary, studies=tuple(search),
                     proxy=proxy_info, finals=tuple(finals), rank=rank, hyperband=hyperband)


def _trial_value(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.value is not None:
        return float(trial.value)
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    return TrialRecord(
        number=trial.number, state=trial.state.name, value=_trial_value(trial),
        params=dict(trial.user_attrs.get("hyperparams", trial.params)),
        epochs_run=len(trial.intermediate_values),
        seconds=trial.duration.total_seconds() if trial.duration is not None else None,
        reason=trial.user_attrs.get("reason"),
    )


def _importances(study: optuna.Study) -> dict[str, float] | None:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 4 or not any(t.params for t in complete):
        return None  # too few points for any importance estimate to mean something
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some regimes have less than 2 trials"
            importances = optuna.importance.get_param_importances(study)
    except Exception as err:  # noqa: BLE001 - a degenerate study: skip the plot, say why
        logger.info("no parameter importances for %s: %s", study.study_name, err)
        return None
    return {name: float(value) for name, value in importances.items()
            if math.isfinite(value)} or None


def _summarise_search(study: optuna.Study, config: HpoConfig) -> StudySummary:
    records = tuple(_record(t) for t in study.get_trials(deepcopy=False)
                    if t.state.name != "WAITING")
    found = _best(study)
    return StudySummary(
        name=study.study_name, role=str(study.user_attrs.get("role", "base")),
        budget=int(study.user_attrs.get("budget", config.trials)),
        wall_seconds=float(study.user_attrs.get("wall_seconds", 0.0)), trials=records,
        best_trial=found[0].number if found else None,
        best_value=float(found[0].value) if found else None,
        best_params=found[1].to_dict() if found else None,
        importances=_importances(study),
    )


def _planned_scores(study: optuna.Study) -> dict[str, tuple[float | None, Any]]:
    """``plan_key -> (score, trial)`` of the finished, non-interrupted planned trials; a
    diverged trial scores 0.0, a failed one None."""
    scores: dict[str, tuple[float | None, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if _finished(trial) and "plan_key" in trial.user_attrs:
            score = _trial_value(trial) if trial.state.name != "FAIL" else None
            scores[trial.user_attrs["plan_key"]] = (score, trial)
    return scores


def _summarise_final(loaded: dict[str, optuna.Study], source: str,
                     search: list[StudySummary]) -> FinalSummary | None:
    candidates = [s for name, s in loaded.items() if name.startswith(f"final-{source}-")]
    if not candidates:
        return None
    winner = next((s.best_params for s in search if s.name == source), None)
    matching = [s for s in candidates if winner is not None
                and s.study_name == f"final-{source}-{_digest(winner)}"]
    study = matching[0] if matching else max(candidates, key=lambda s: s._study_id)
    scores = _planned_scores(study)
    seeds, accuracies, failed, params, model_path = [], [], [], {}, None
    best_value = -1.0
    for _key, (score, trial) in sorted(scores.items(), key=lambda kv: kv[1][1].user_attrs["seed"]):
        seed = int(trial.user_attrs["seed"])
        params = trial.user_attrs["hyperparams"]
        seeds.append(seed)
        if score is None:
            failed.append(seed)
            continue
        accuracies.append(score)
        if score > best_value and "model_path" in trial.user_attrs:
            best_value, model_path = score, trial.user_attrs["model_path"]
    if not seeds:
        waiting = study.get_trials(deepcopy=False)
        params = waiting[0].user_attrs.get("hyperparams", {}) if waiting else {}
    return FinalSummary(source=source, params=params, seeds=tuple(seeds),
                        accuracies=tuple(accuracies), failed_seeds=tuple(failed),
                        model_path=model_path)


def _summarise_rank(base: optuna.Study, proxy: optuna.Study) -> RankSummary:
    base_scores, proxy_scores = _planned_scores(base), _planned_scores(proxy)
    keys = sorted(set(base_scores) | set(proxy_scores), key=lambda k: int(k.removeprefix("config")))
    params = []
    for key in keys:
        trial = (base_scores.get(key) or proxy_scores.get(key))[1]
        params.append(trial.user_attrs["hyperparams"])
    return RankSummary.compute(
        params, [base_scores[k][0] if k in base_scores else None for k in keys],
        [proxy_scores[k][0] if k in proxy_scores else None for k in keys])


__all__ = [
    "MODES",
    "PRUNERS",
    "SAMPLERS",
    "HpoConfig",
    "Job",
    "NetworkFactory",
    "Snapshot",
    "collect_report",
    "compare",
    "hyperband_settings",
    "load_data",
    "load_run",
    "mask_url",
    "open_storage",
    "rank_configurations",
    "repair_journal",
    "run",
    "startup_trials",
    "write_run_report",
]
