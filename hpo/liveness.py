"""Who runs which trial, whether they are still alive, and how a trial is claimed.

A claimed trial is stamped with its owner (host, pid, process start time, heartbeat
interval, claim time) and, while it runs, a heartbeat thread beats every ``--heartbeat``
seconds. Optuna beats only inside ``study.optimize`` and the driver uses ask/tell, so the
thread is ours. Each beat writes a ``heartbeat`` user attribute (this machine's clock) and,
on an RDB, Optuna's own heartbeat. What judges a silent machine depends on the storage:

* RDB (``--storage``): Optuna's heartbeat (``storage.record_heartbeat``, stamped with the
  database's clock; ``hpo.storage`` opens the RDB with ``heartbeat_interval`` and
  ``grace_period``), and ``optuna.storages.fail_stale_trials`` fails its trials;
* journal: the ``heartbeat`` attribute.

The attribute also ends a killed trial's time at its last beat (``last_alive``).

A RUNNING trial is abandoned when

* its owner is on this host and the process is gone (pid dead, zombie or reused), or it is
  this very process and no longer running it;
* its owner is on another host and its last heartbeat is older than three intervals
  (plus two seconds): the machine died or lost the database (RDB: Optuna's verdict);
* it was never stamped and is over a minute old.

An abandoned trial is marked FAIL with ``reason`` "interrupted ..." (a trial Optuna
failed can no longer take attributes: its reason is the study attribute
``interrupted:<number>``) and its params and plan are enqueued again; interrupted trials
do not count toward the budget, so a study
killed at any point ends with exactly ``trials`` finished trials, none lost and none
repeated. A trial that FAILED (bad data, an exception) is retried once on the next run of
the command: it is listed under the study attribute ``retried:<number>`` and its point is
enqueued again (failures are usually fixed between runs; a second failure stays). Being
interrupted is not a failure: a trial interrupted any number of times keeps its retry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import _optuna
from hpo.config import HpoConfig, Job
from hpo.registry import SAMPLERS
from hpo.storage import claim_lock, grace_seconds, take_stale_trials

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("hpo")

INTERRUPTED = "interrupted"
RETRIED_PREFIX = "retried:"
INTERRUPTED_PREFIX = f"{INTERRUPTED}:"  # study attribute of a trial Optuna's heartbeat failed
UNSTAMPED_GRACE_S = 60.0  # a RUNNING trial with no owner yet, older than this, is abandoned
HOST_ENV = "FXPRUNE_HPO_HOST"  # tests stand in for several machines on one host

_ACTIVE_TRIALS: set[int] = set()  # storage trial ids this process is running right now


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def process_start(pid: int) -> str | None:
    """Start time of a live process (``/proc/<pid>/stat`` field 22); None if dead/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def owner_stamp(config: HpoConfig) -> dict[str, Any]:
    return {"host": host_name(), "pid": os.getpid(), "start": process_start(os.getpid()),
            "heartbeat_s": config.heartbeat, "claimed": time.time()}


def owner_alive(trial: optuna.trial.FrozenTrial, now: float | None = None,
                remote_beats: bool = True) -> bool:
    """Whether the process running ``trial`` may still be alive (module docstring);
    ``remote_beats=False``: another host's trial is judged by Optuna's heartbeat instead."""
    owner = trial.user_attrs.get("owner")
    if owner is None:  # asked for but not yet stamped: stale only once clearly abandoned
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() < UNSTAMPED_GRACE_S
    if owner.get("host") != host_name():
        if not remote_beats:
            return True
        beat = trial.user_attrs.get("heartbeat")
        if beat is None:
            return True  # an old run without heartbeats: we cannot tell
        return (now or time.time()) - float(beat) <= _grace(owner)
    pid = int(owner.get("pid", -1))
    if pid == os.getpid() and owner.get("start") == process_start(pid):
        return _optuna.trial_id(trial) in _ACTIVE_TRIALS
    if Path("/proc").is_dir():  # dead, zombie, or the pid reused by a later process
        start = process_start(pid)
        return start is not None and start == owner.get("start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beat(study: optuna.Study, trial: Any) -> None:
    """One heartbeat of a running trial: Optuna's on an RDB (what judges it there), and the
    user attribute (the journal's judge; on both, where ``last_alive`` finds a dead
    machine's trial's end)."""
    if _optuna.has_heartbeat(study):
        _optuna.record_heartbeat(study, trial)
    _optuna.set_user_attr(study, trial, "heartbeat", time.time())


def last_alive(trial: optuna.trial.FrozenTrial) -> datetime | None:
    """When a trial retired as abandoned (its machine killed or lost) last showed life: its
    last heartbeat, on the clock of Optuna's own stamps (its start plus the owner's seconds
    from claim to last beat: no time zone enters). None for any other trial, and when the
    heartbeat is within the grace of the trial's end (a Ctrl-C, a failure: the recorded end
    is right). Optuna stamps a retired trial's end when a later run noticed, so the time in
    between is downtime, not search time (``hpo.collect``)."""
    from optuna.trial import TrialState

    owner = trial.user_attrs.get("owner") or {}
    beat, claimed = trial.user_attrs.get("heartbeat"), owner.get("claimed")
    start, end = trial.datetime_start, trial.datetime_complete
    if (trial.state != TrialState.FAIL or start is None or end is None
            or not all(isinstance(v, (int, float)) for v in (beat, claimed))):
        return None
    last = start + timedelta(seconds=max(0.0, beat - claimed))
    return last if (end - last).total_seconds() > _grace(owner) else None


def _grace(owner: dict[str, Any]) -> float:
    """The silence after which the owner's trial counts as abandoned, by its own interval."""
    return grace_seconds(float(owner.get("heartbeat_s", 10.0)))


class Heartbeat:
    """Beats (``beat``) for a running trial every ``interval`` seconds, on a thread."""

    def __init__(self, study: optuna.Study, trial: Any, interval: float) -> None:
        self.study, self.trial, self.interval = study, trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hpo-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.study, self.trial)
            except Exception:  # noqa: BLE001 - finished meanwhile, or the storage blinked
                if self._stop.is_set():
                    return

    def __enter__(self) -> Heartbeat:  # noqa: PYI034 - Self needs Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def retried_numbers(study: optuna.Study) -> set[int]:
    """Trials that count as interrupted by a study attribute: retried failures and the
    trials Optuna's heartbeat failed."""
    return {int(k.split(":", 1)[1]) for k in study.user_attrs
            if k.startswith((RETRIED_PREFIX, INTERRUPTED_PREFIX))}


def is_interrupted(trial: optuna.trial.FrozenTrial, retried: set[int] = frozenset()) -> bool:
    return (str(trial.user_attrs.get("reason", "")).startswith(INTERRUPTED)
            or trial.number in retried)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, failed: bool) -> None:
    """Queue ``trial``'s params and plan again. ``retries`` counts real failures only (a
    failure is retried once); an interruption is not the trial's fault and uses none."""
    keep = {k: v for k, v in trial.user_attrs.items()
            if k in ("seed", "plan_key", "hyperparams", "retries")}
    keep["retries"] = int(keep.get("retries", 0)) + int(failed)
    keep["retry_of"] = trial.number
    study.enqueue_trial(dict(trial.params), user_attrs=keep)


def retire_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str) -> None:
    """Mark ``trial`` FAIL (reason "interrupted ...") and enqueue its params and plan again;
    nothing when another process finished or retired it meanwhile (it queued them)."""
    import optuna

    try:
        _optuna.set_user_attr(study, trial, "reason", f"{INTERRUPTED}: {why}")
        _optuna.fail(study, trial)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    _requeue(study, trial, failed=False)
    logger.warning("trial %d of %s interrupted (%s); its params are queued again",
                   trial.number, study.study_name, why)


def retryable_failures(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that FAILED (not interrupted) and were not retried yet: the next run
    queues them again."""
    from optuna.trial import TrialState

    retried = retried_numbers(study)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if not is_interrupted(t, retried) and int(t.user_attrs.get("retries", 0)) < 1]


def retry_failures(study: optuna.Study) -> int:
    """Queue again, once, every trial that FAILED in an earlier run (see module doc)."""
    failed = retryable_failures(study)
    for trial in failed:
        study.set_user_attr(f"{RETRIED_PREFIX}{trial.number}", trial.user_attrs.get("reason"))
        _requeue(study, trial, failed=True)
    if failed:
        logger.warning("%s: %d failed trial(s) queued again", study.study_name, len(failed))
    return len(failed)


def recover_stale(study: optuna.Study) -> int:
    """Retire every abandoned RUNNING trial (module docstring); returns how many."""
    import optuna
    from optuna.trial import TrialState

    by_optuna = _optuna.has_heartbeat(study)
    failed_by_heartbeat = []
    if by_optuna:
        with warnings.catch_warnings():  # fail_stale_trials is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed_by_heartbeat = [t for t in take_stale_trials() if t.number not in
                               retried_numbers(study)]
    for trial in failed_by_heartbeat:  # FAIL already: the reason goes on the study
        owner = (trial.user_attrs.get("owner") or {}).get("host", "another machine")
        why = f"{INTERRUPTED}: on another machine ({owner}), no heartbeat (Optuna's)"
        study.set_user_attr(f"{INTERRUPTED_PREFIX}{trial.number}", why)
        _requeue(study, trial, failed=False)
        logger.warning("trial %d of %s %s; its params are queued again", trial.number,
                       study.study_name, why)
    now = time.time()
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if not owner_alive(t, now, remote_beats=not by_optuna)]
    for trial in stale:
        owner = trial.user_attrs.get("owner") or {}
        where = "on another machine, no heartbeat" if owner.get("host") not in (
            None, host_name()) else "its process is gone"
        retire_interrupted(study, trial, where)
    return len(failed_by_heartbeat) + len(stale)


def interruption(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
    """Why ``trial`` was interrupted, wherever it is written (trial or study attribute)."""
    reason = trial.user_attrs.get("reason")
    if isinstance(reason, str) and reason.startswith(INTERRUPTED):
        return reason
    return study.user_attrs.get(f"{INTERRUPTED_PREFIX}{trial.number}")


def counts_toward_budget(trial: optuna.trial.FrozenTrial, retried: set[int]) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not is_interrupted(trial, retried)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def finished(trial: optuna.trial.FrozenTrial, retried: set[int] = frozenset()) -> bool:
    return trial.state.is_finished() and not is_interrupted(trial, retried)


def work_left(study: optuna.Study, job: Job) -> bool:
    from optuna.trial import TrialState

    if job.kind != "search":
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    retried = retried_numbers(study)
    used = sum(counts_toward_budget(t, retried) for t in study.get_trials(deepcopy=False))
    return used < job.budget


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def claim(study: optuna.Study, job: Job, config: HpoConfig) -> optuna.Trial | None:
    """Under the claim lock: recover stale trials, check the budget, ask for a trial."""
    with claim_lock(config):
        recover_stale(study)
        if not work_left(study, job):
            return None
        if job.kind == "search":
            existing = len(study.get_trials(deepcopy=False))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning of multivariate TPE
                study.sampler = SAMPLERS[config.sampler](
                    (job.sampler_seed * 1_000_003 + existing) % 2**31, config.trials)
        with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with optimize":
            warnings.filterwarnings("ignore", message="Heartbeat")  # we beat it ourselves
            trial = study.ask()
        trial.set_user_attr("owner", owner_stamp(config))
        beat(study, trial)  # from the first moment (RDB: fail_stale_trials sees it)
        if "seed" not in trial.user_attrs:  # below FINAL_SEED_OFFSET: never a final's seed
            trial.set_user_attr("seed", 1 + (job.sampler_seed + trial.number) % 900_000)
        _ACTIVE_TRIALS.add(_optuna.trial_id(trial))
        return trial


def release(trial: Any) -> None:
    _ACTIVE_TRIALS.discard(_optuna.trial_id(trial))


__all__ = ["INTERRUPTED", "INTERRUPTED_PREFIX", "Heartbeat", "beat", "claim",
           "counts_toward_budget", "finished", "host_name", "interruption", "is_interrupted",
           "last_alive", "owner_alive", "recover_stale", "release", "retire_interrupted",
           "retried_numbers", "retry_failures", "retryable_failures", "running", "work_left"]
