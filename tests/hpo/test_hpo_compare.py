"""The unbiased compare: disjoint seeds, per-arm sampler seeds, repeats with intervals,
the elapsed span as wall time."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from scipy import stats

from hpo import driver
from hpo.collect import elapsed_span
from hpo.config import FINAL_SEED_OFFSET, arm_seed
from hpo.report import HpoReport, mean_ci


def test_elapsed_span_counts_overlaps_once_and_skips_gaps():
    t0 = datetime(2026, 1, 1)
    trial = lambda a, b: SimpleNamespace(datetime_start=t0 + timedelta(seconds=a),
                                         datetime_complete=t0 + timedelta(seconds=b))
    # two workers overlapping on [0, 10] and [5, 12], a kill, then a resume at [100, 103]
    assert elapsed_span([trial(0, 10), trial(5, 12), trial(100, 103)]) == 15.0
    assert elapsed_span([]) == 0.0


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
