"""Liveness on an RDB storage is Optuna's own heartbeat: recorded by our ask/tell loop,
judged by ``optuna.storages.fail_stale_trials`` with the database's clock."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from hpo import _optuna, liveness, worker
from hpo.driver import ProxyHpo
from hpo.liveness import HOST_ENV
from hpo.storage import heartbeat_settings, open_storage


def _heartbeats(database: Path) -> dict[int, str]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("SELECT trial_id, heartbeat FROM trial_heartbeats"))


def test_heartbeat_settings_follow_the_journal_rule():
    assert heartbeat_settings(10.0) == (10, 32)  # three beats plus two seconds
    assert heartbeat_settings(0.5) == (1, 4)  # Optuna takes whole seconds, at least one


def test_a_silent_machines_trial_is_failed_by_optuna_and_queued_again(make_config, tmp_path,
                                                                      monkeypatch):
    database = tmp_path / "hpo.db"
    config = make_config(mode="typical", trials=2, storage=f"sqlite:///{database}",
                         heartbeat=0.5)
    hpo = ProxyHpo(config)
    hpo.validate(("base",))
    job = hpo.search_job("typical")
    study = hpo.prepare(job)
    storage = open_storage(config)
    assert (storage.get_heartbeat_interval(), storage.grace_period) == (1, 4)

    monkeypatch.setenv(HOST_ENV, "machine-a")
    trial = liveness.claim(study, job, config)
    liveness.release(trial)  # as if machine-a's process held it
    beats = _heartbeats(database)
    assert list(beats) == [_optuna.trial_id(trial)]  # recorded at the claim, before any epoch

    monkeypatch.setenv(HOST_ENV, "machine-b")
    assert liveness.recover_stale(study) == 0  # a fresh heartbeat: machine-a is alive
    first = beats[_optuna.trial_id(trial)]
    time.sleep(1.1)
    liveness.beat(study, trial)  # the heartbeat thread's beat moves Optuna's stamp
    assert _heartbeats(database)[_optuna.trial_id(trial)] > first

    # machine-a goes silent: its Optuna heartbeat is a minute old. Our own "heartbeat"
    # attribute is made fresh to show that Optuna's stamp is what is judged.
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds')")
    optuna_study = optuna.load_study(study_name=job.name, storage=open_storage(config))
    _optuna.set_user_attr(optuna_study, trial, "heartbeat", time.time())

    assert liveness.recover_stale(optuna_study) == 1
    trials = optuna_study.get_trials()
    lost = trials[0]
    assert lost.state.name == "FAIL"
    assert liveness.interruption(optuna_study, lost).startswith(
        "interrupted: on another machine (machine-a), no heartbeat (Optuna's)")
    assert liveness.is_interrupted(lost, liveness.retried_numbers(optuna_study))
    requeued = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(requeued) == 1 and requeued[0].state.name == "WAITING"
    assert liveness.recover_stale(optuna_study) == 0  # reclaimed once, not again

    # the interrupted trial does not use the budget: both trials still run, then the report
    hpo.run_job(job)
    done = [t for t in optuna_study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2
    report = hpo.report("run")
    reasons = [t.reason for t in report.study("typical").trials if t.number == lost.number]
    assert reasons and reasons[0].startswith("interrupted: on another machine")


def _claimed(make_config, trials: int):
    """A journal run's search study with one trial claimed by this process."""
    config = make_config(mode="typical", trials=trials)
    hpo = ProxyHpo(config)
    job = hpo.search_job("typical")
    study = hpo.prepare(job)
    return config, job, study, liveness.claim(study, job, config)


def test_the_journal_keeps_the_heartbeat_attribute(make_config):
    _, _, study, trial = _claimed(make_config, 1)
    try:
        stamped = study.get_trials()[0].user_attrs["heartbeat"]
        time.sleep(0.05)
        liveness.beat(study, trial)
        assert study.get_trials()[0].user_attrs["heartbeat"] > stamped
    finally:
        liveness.release(trial)


class _ReclaimedMidway:
    """Stands in for ``TrialRunner``: while "training", another process retires the trial
    (as ``recover_stale`` does for a silent machine); the next epoch report then finds it
    finished."""

    def __init__(self, config, study):
        self.config, self.study, self.events = config, study, []

    def __call__(self, trial):
        other = optuna.load_study(study_name=self.study.study_name,
                                  storage=open_storage(self.config))
        liveness.retire_interrupted(other, _optuna.frozen(other, trial), "test: no heartbeat")
        trial.report(0.5, 1)  # raises: the trial is finished in the storage
        return 0.5

    def finished(self, event=None):
        self.events.append(event)


def test_a_trial_reclaimed_while_it_runs_is_one_line_and_the_run_goes_on(make_config):
    config, job, study, trial = _claimed(make_config, 2)
    runner = _ReclaimedMidway(config, study)
    worker.run_trial(study, trial, runner)  # no UpdateFinishedTrialError escapes

    assert len(runner.events) == 1 and "retired by another process" in runner.events[0]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # queued again once
    assert liveness.is_interrupted(trials[0])
    # retiring it again (this process's own Ctrl-C handler, say) changes nothing
    liveness.retire_interrupted(study, trials[0], "stopped by the user")
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]
    assert liveness.work_left(study, job)  # the interrupted trial left the budget whole


def test_a_user_error_still_stops_the_run_after_its_trial_was_retired(make_config):
    from fxprune.errors import DataError

    class BadData(_ReclaimedMidway):
        def __call__(self, trial):
            other = optuna.load_study(study_name=self.study.study_name,
                                      storage=open_storage(self.config))
            liveness.retire_interrupted(other, _optuna.frozen(other, trial), "test")
            raise DataError("images/0.png: cannot decode image")

    config, _, study, trial = _claimed(make_config, 2)
    with pytest.raises(DataError, match="cannot decode"):
        worker.run_trial(study, trial, BadData(config, study))


def test_an_interruption_does_not_use_up_the_failure_retry(make_config):
    config, job, study, first = _claimed(make_config, 1)
    liveness.release(first)
    liveness.retire_interrupted(study, _optuna.frozen(study, first), "stopped by the user")
    again = liveness.claim(study, job, config)  # the queued point
    liveness.release(again)
    assert again.user_attrs["retry_of"] == first.number
    again.set_user_attr("reason", "ValueError: bad data")
    study.tell(again, state=optuna.trial.TrialState.FAIL)

    assert [t.number for t in liveness.retryable_failures(study)] == [again.number]
    assert liveness.retry_failures(study) == 1
    retry = study.get_trials()[-1]
    assert retry.state.name == "WAITING" and retry.user_attrs["retries"] == 1
    assert liveness.retryable_failures(study) == []  # the one retry is used


@pytest.fixture(autouse=True)
def _no_stale_leftovers():
    from hpo.storage import take_stale_trials

    take_stale_trials()
    yield
    take_stale_trials()
