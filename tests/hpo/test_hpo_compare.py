"""The unbiased compare: disjoint seeds, per-arm sampler seeds, repeats with intervals,
the elapsed span as wall time."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from scipy import stats

from hpo import driver
from hpo.collect import _record, active_interval, elapsed_span
from hpo.config import FINAL_SEED_OFFSET, arm_seed
from hpo.report import HpoReport, mean_ci

T0 = datetime(2026, 1, 1)


def _trial(start: float, end: float, state: str = "COMPLETE", beat: float | None = None):
    attrs = {"owner": {"heartbeat_s": 10.0, "claimed": (T0 + timedelta(seconds=start)).timestamp()}}
    if beat is not None:  # the "heartbeat" attribute: this machine's clock, epoch seconds
        attrs["heartbeat"] = (T0 + timedelta(seconds=beat)).timestamp()
    return SimpleNamespace(datetime_start=T0 + timedelta(seconds=start),
                           datetime_complete=T0 + timedelta(seconds=end),
                           state=TrialState[state], user_attrs=attrs, number=0, value=None,
                           params={}, intermediate_values={})


def test_elapsed_span_counts_overlaps_once_and_skips_gaps():
    # two workers overlapping on [0, 10] and [5, 12], a kill, then a resume at [100, 103]
    assert elapsed_span([_trial(0, 10), _trial(5, 12), _trial(100, 103)]) == 15.0
    assert elapsed_span([]) == 0.0


def test_a_killed_trial_ends_at_its_last_heartbeat_not_when_the_resume_retired_it():
    # kill -9 at ~40 s (last beat 38 s); the resume at 1000 s marks it FAIL then
    killed = _trial(0, 1000, "FAIL", beat=38)
    resumed = _trial(1000, 1030)
    assert active_interval(killed)[1] == T0 + timedelta(seconds=38)
    assert elapsed_span([killed, resumed]) == 38 + 30
    assert _record(killed, SimpleNamespace(user_attrs={})).seconds == 38
    # a trial failed in its own process (Ctrl-C, an exception): the recorded end stands
    assert active_interval(_trial(0, 45, "FAIL", beat=38))[1] == T0 + timedelta(seconds=45)
    # a completed trial never moves; nor does one with no heartbeat recorded
    assert active_interval(_trial(0, 1000, beat=38))[1] == T0 + timedelta(seconds=1000)
    assert active_interval(_trial(0, 1000, "FAIL"))[1] == T0 + timedelta(seconds=1000)


def test_mean_ci_is_the_student_t_interval():
    result = mean_ci([1.0, 2.0, 3.0, None])
    half = stats.t.ppf(0.975, 2) * 1.0 / 3 ** 0.5
    assert result["n"] == 3 and result["mean"] == pytest.approx(2.0)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert mean_ci([4.0])["ci_low"] is None


def test_arms_and_repeats_get_their_own_sampler_seeds(make_config):
    config = make_config()
    seeds = {arm_seed(config, r, arm) for r in range(3) for arm in ("typical", "proxy")}
    assert len(seeds) == 6


@pytest.mark.parametrize("arm", ["typical", "proxy"])
def test_samplers_get_their_own_start_up_points(make_config, arm):
    """GP and CMA-ES fall back to random sampling while few trials are COMPLETE: with one
    seed for all samplers they drew identical points (identical benchmark repeats)."""
    import optuna

    from hpo.liveness import claim

    drawn = {}
    for sampler in ("tpe", "gp", "cmaes"):
        config = make_config(sampler=sampler)
        job = driver.ProxyHpo(config).search_job(arm, repeat=0)
        study = optuna.create_study(direction="maximize")
        points = []
        for _ in range(3):  # the start-up phase: three trials, none complete yet
            trial = claim(study, job, config)
            points.append(config.space.suggest(trial).lr)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        drawn[sampler] = tuple(points)
    assert len(set(drawn.values())) == 3, drawn


def test_compare_with_repeats_reports_intervals(make_config):
    config = make_config(trials=2, epochs=1, seeds=1, kendall_k=2, repeats=2, sampler="tpe")
    report = driver.compare(config)
    assert [r.repeat for r in report.repeats] == [0, 1]
    names = {s.name for s in report.studies}
    assert names == {"r0-typical", "r0-proxy", "r1-typical", "r1-proxy"}
    for final in report.finals:  # final seeds never replay a search trial's seed
        assert final.seeds == (FINAL_SEED_OFFSET,)
    for study in report.studies:
        assert 0 < study.wall_seconds and study.trial_seconds > 0
    saved = report.to_dict()
    assert set(saved["statistics"]) == {"accuracy_gap_pp", "time_reduction_pct", "kendall_tau"}
    assert saved["statistics"]["accuracy_gap_pp"]["n"] == 2
    assert saved["statistics"]["accuracy_gap_pp"]["ci_low"] is not None
    for repeat in saved["repeats"]:
        assert set(repeat["winners"]) == {"typical", "proxy"}
        assert set(repeat["test_accuracy"]) == {"typical", "proxy"}
    again = HpoReport.from_dict(saved)
    assert again.statistics() == report.statistics()
    assert report.accuracy_gap == pytest.approx(saved["statistics"]["accuracy_gap_pp"]["mean"])


def test_study_name_keeps_experiments_apart(make_config, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one = make_config(mode="typical", trials=1, epochs=1, storage=url, study_name="exp1",
                      out=str(tmp_path / "one"))
    two = one.replace(study_name="exp2", epochs=2, out=str(tmp_path / "two"))
    driver.run(one)
    report = driver.run(two)  # other options under another name: no conflict
    assert report.study("typical").trials[0].epochs_run == 2
    import optuna

    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert {"exp1:typical", "exp2:typical"} <= names
