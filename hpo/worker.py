"""Running a job: claim trials and train them, inline or on local worker processes.

A trial whose loss turns NaN/inf is recorded as PRUNED with value 0.0 at the epoch where
it diverged (so TPE learns the region is bad) and ``reason`` "diverged: ..."; an
out-of-memory error or any other exception is recorded as FAIL with its ``reason``; the
study goes on. An ``FxPruneError`` (a user mistake such as a corrupt data file) fails the
trial and stops the run with its one-line message (the trial is retried on the next run).

Signals: SIGINT and SIGTERM (what ``timeout``, Slurm and ``kill`` send) both stop the run
the same way: the running trial is marked interrupted and queued again, the process
exits 130 or 143. ``workers=N`` starts N spawned processes that die with their parent
(``PR_SET_PDEATHSIG`` on Linux, plus a parent-pid check between trials) and get the
parent's SIGTERM forwarded. Each takes ``cores // N`` intra-op threads (``threads``
overrides: on a machine shared with other jobs, 1 thread avoids OpenMP oversubscription).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxprune.errors import FxPruneError
from hpo import _optuna, liveness
from hpo.config import BRACKET_KEY, HpoConfig, Job, ProgressCallback, Snapshot
from hpo.network import load_data, network_factory
from hpo.registry import PRUNERS
from hpo.report import atomic_write
from hpo.space import HyperParams
from hpo.storage import claim_lock, is_storage_failure, open_storage, storage_error

if TYPE_CHECKING:
    import optuna
    from torch import nn

logger = logging.getLogger("hpo")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT (the trial is re-queued) but exiting 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Turn SIGTERM into ``Terminated`` in this (main-thread) process."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def progress_counts(study: optuna.Study) -> tuple[int, float | None]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = liveness.retried_numbers(study)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sum(liveness.finished(t, retried) for t in trials), (max(values) if values else None)


class TrialRunner:
    """Trains one trial's network and reports each epoch to Optuna and to the progress."""

    def __init__(self, config: HpoConfig, job: Job, study: optuna.Study,
                 progress: ProgressCallback | None) -> None:
        self.config, self.job, self.study, self.progress = config, job, study, progress
        self.data = load_data(config)
        self.factory = network_factory(config, self.data, job.role)
        self.factory.warm_up()
        if self.factory.proxy_info is not None and "proxy_info" not in study.user_attrs:
            study.set_user_attr("proxy_info", dataclasses.asdict(self.factory.proxy_info))
        if "data" not in study.user_attrs:
            study.set_user_attr("data", self.data.summary())
        self.done, self.best = progress_counts(study)

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
        self.show(trial.number, 0, None)

        def on_epoch(epoch: int, accuracy: float) -> None:
            trial.report(accuracy, epoch)
            self.show(trial.number, epoch, accuracy)
            if prunable and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        model = self.factory.make(seed)
        result = train_model(model, self.data, hyperparams, self.config.epochs, seed=seed,
                             on_epoch=on_epoch, eval_split=self.job.eval_split,
                             lr_scales=self.factory.lr_scales)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        if self.job.save_models:
            trial.set_user_attr("model_path", save_model(self.config, self.job, seed, model))
        return result.final_accuracy

    def show(self, number: int | None, epoch: int, value: float | None,
             event: str | None = None) -> None:
        if self.progress is not None:
            self.progress(Snapshot(self.job.name, self.done, self.job.budget, number, epoch,
                                   self.config.epochs, value, self.best, event))

    def finished(self, event: str | None = None) -> None:
        self.done, self.best = progress_counts(self.study)
        self.show(None, 0, None, event)


def save_model(config: HpoConfig, job: Job, seed: int, model: nn.Module) -> str:
    import torch

    relative = f"models/{job.name.replace(':', '-')}-seed{seed}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(config.out) / relative, lambda tmp: torch.save(state, tmp))
    return relative


def run_trial(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner) -> None:
    """Run one claimed trial and record how it ended; only user errors, storage failures
    and interrupts escape, everything else is written down and the study goes on."""
    import optuna

    event = None
    try:
        event = _run_and_tell(study, trial, runner)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another process retired this trial as abandoned while it ran (no heartbeat reached
        # the storage in time: an outage, a paused machine) and queued its params again.
        event = (f"trial {trial.number} was retired by another process while it ran (its "
                 "heartbeat did not reach the storage in time); its params run again, "
                 "this run goes on")
        logger.warning("%s: %s", study.study_name, event)
    finally:
        liveness.release(trial)
    runner.finished(event)


def _run_and_tell(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner) -> str | None:
    """Train ``trial`` and record how it ended; returns the line worth printing, if any."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from hpo.train import TrainingDiverged

    out_of_memory = tuple(t for t in (MemoryError, getattr(torch, "OutOfMemoryError", None)) if t)
    event = None
    try:
        with liveness.Heartbeat(study, trial, runner.config.heartbeat):
            value = runner(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    except TrainingDiverged as err:
        trial.set_user_attr("reason", str(err))
        trial.report(0.0, err.epoch)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        event = f"trial {trial.number} {err}"
    except FxPruneError as err:
        # a user error stops the run even if the trial was retired meanwhile
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr("reason", str(err))
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except KeyboardInterrupt as err:
        why = "terminated (SIGTERM)" if isinstance(err, Terminated) else "stopped by the user"
        with claim_lock(runner.config):  # no claim between its FAIL and its re-queue
            liveness.retire_interrupted(study, _optuna.frozen(study, trial), why)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # retired by another process meanwhile (run_trial)
    except Exception as err:
        if is_storage_failure(err):
            raise
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
    return event


def work(config: HpoConfig, job: Job, progress: ProgressCallback | None = None,
         parent: int | None = None) -> None:
    """One worker: claim and run trials until the job's budget is used up."""
    import optuna

    quiet_optuna()
    # Planned trials (finals, confirmations, rank configurations) are never pruned.
    study = optuna.load_study(study_name=job.name, storage=open_storage(config))
    study.pruner = PRUNERS[config.search_pruner if job.kind == "search" else "none"](
        config.trials, config.epochs, study.user_attrs.get(BRACKET_KEY))
    runner: TrialRunner | None = None
    while True:
        if parent is not None and os.getppid() != parent:
            raise Terminated()  # the parent is gone: stop with it
        if runner is None:  # build the network only once there is work for it
            with claim_lock(config):
                has_work = liveness.work_left(study, job)
            if not has_work:
                return
            runner = TrialRunner(config, job, study, progress)
        trial = liveness.claim(study, job, config)
        if trial is None:
            return
        run_trial(study, trial, runner)


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM when the parent process dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_entry(config_data: dict[str, Any], job_data: dict[str, Any], errors: Any,
                 parent: int) -> None:
    """Entry point of a spawned worker process."""
    import torch

    from hpo.train import threads_per_worker

    _die_with_parent()
    handle_sigterm()
    if os.getppid() != parent:
        raise SystemExit(143)
    config, job = HpoConfig.from_dict(config_data), Job.from_dict(job_data)
    torch.set_num_threads(config.threads or threads_per_worker(config.workers))
    try:
        work(config, job, parent=parent)
    except FxPruneError as err:
        errors.put(str(err))
        raise SystemExit(2) from None
    except Terminated:
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as err:
        if not is_storage_failure(err):
            raise
        errors.put(str(storage_error(config, err)))
        raise SystemExit(2) from None


def run_job(config: HpoConfig, job: Job, progress: ProgressCallback | None) -> None:
    """Run ``job`` until its budget is used up, inline or on ``config.workers`` processes."""
    import torch

    from hpo.train import threads_per_worker

    quiet_optuna()
    if config.workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads or threads_per_worker(1))
        try:
            work(config, job, progress)
        finally:
            torch.set_num_threads(threads)
    else:
        run_workers(config, job, progress)


def run_workers(config: HpoConfig, job: Job, progress: ProgressCallback | None) -> None:
    import optuna

    study = optuna.load_study(study_name=job.name, storage=open_storage(config))
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = [context.Process(target=worker_entry, args=(config.to_dict(), job.to_dict(),
                                                            errors, os.getpid()),
                                 name=f"hpo-worker-{i}")
                 for i in range(config.workers)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            if progress is not None:
                show_remote(study, job, config, progress)
            for process in processes:
                process.join(timeout=1.0 / len(processes))
    except KeyboardInterrupt as err:
        for process in processes:  # SIGINT reached them too; SIGTERM only us: forward it
            if isinstance(err, Terminated) and process.is_alive():
                process.terminate()
        for process in processes:
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


def show_remote(study: optuna.Study, job: Job, config: HpoConfig,
                progress: ProgressCallback) -> None:
    """Progress snapshots of the trials run by other processes (workers, machines): one of
    the counts, then one per running trial."""
    done, best = progress_counts(study)
    for current in [None, *liveness.running(study)]:
        step = current.last_step if current is not None else None
        progress(Snapshot(job.name, done, job.budget, current.number if current else None,
                          step or 0, config.epochs,
                          current.intermediate_values.get(step) if step is not None else None,
                          best))


def wait_for_others(study: optuna.Study, job: Job, config: HpoConfig,
                    progress: ProgressCallback | None, poll: float = 1.0) -> None:
    """Block until no trial of ``study`` is RUNNING anywhere (other machines finish theirs,
    dead ones are reclaimed and re-run here), so every machine reads the same winner."""
    while True:
        with claim_lock(config):
            liveness.recover_stale(study)
            left = liveness.work_left(study, job)
            busy = bool(liveness.running(study))
        if left:
            work(config, job, progress)  # a reclaimed trial: run it here
            continue
        if not busy:
            return
        if progress is not None:
            show_remote(study, job, config, progress)
        time.sleep(poll)


__all__ = ["Terminated", "TrialRunner", "handle_sigterm", "quiet_optuna", "run_job",
           "run_trial", "wait_for_others", "work"]
