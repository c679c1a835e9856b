"""``--confirm K``: the K best sets of a proxy search train once on the base network and
the best of them wins; the compare reports that arm next to the paper's, with its
confirmation runs counted in its search time."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hpo import driver
from hpo.collect import top_trials
from hpo.config import CONFIRM_SEED_OFFSET


def _study_with(values: list[float | None], lrs: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for value, lr in zip(values, lrs):
        trial = study.ask()
        trial.set_user_attr("hyperparams", {"lr": lr, "batch_size": 32, "weight_decay": 1e-4})
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def test_top_trials_are_the_best_distinct_complete_sets():
    # trial 3 repeats trial 1's set; trial 4 was pruned; ties go to the earlier trial
    study = _study_with([0.5, 0.9, 0.7, 0.9, None, 0.7], [0.1, 0.2, 0.3, 0.2, 0.5, 0.6])
    chosen = top_trials(study, 3)
    assert [trial.number for trial, _ in chosen] == [1, 2, 5]
    assert [hp.lr for _, hp in chosen] == [0.2, 0.3, 0.6]
    assert len(top_trials(study, 10)) == 4  # only four distinct complete sets


def _confirm_trials(config) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = driver.open_storage(config)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in optuna.get_all_study_summaries(storage) if s.study_name.endswith("confirm")}


def test_compare_with_confirm_reports_the_confirmed_arm(make_config):
    config = make_config(trials=4, epochs=1, seeds=1, repeats=2, confirm=2)
    report = driver.compare(config)
    confirms = _confirm_trials(config)
    assert set(confirms) == {"r0-confirm", "r1-confirm"}
    for repeat in report.repeats:
        stage = f"r{repeat.repeat}-"
        proxy = report.study(f"{stage}proxy")
        ranked = sorted((t for t in proxy.trials if t.state == "COMPLETE"),
                        key=lambda t: (-t.value, t.number))
        trials = confirms[f"{stage}confirm"]
        # the proxy's two best sets, in its order, trained once on the same seed
        assert [t.user_attrs["hyperparams"] for t in trials] == [t.params for t in ranked[:2]]
        assert {t.user_attrs["seed"] for t in trials} == {config.seed + CONFIRM_SEED_OFFSET
                                                          + repeat.repeat}
        best = max(trials, key=lambda t: (t.value, -t.number))
        assert repeat.winners["confirm"]["params"] == best.user_attrs["hyperparams"]
        assert repeat.winners["confirm"]["trial"] == best.user_attrs["proxy_trial"]  # named
        assert repeat.winners["confirm"]["confirm_trial"] == best.number  # by the proxy's number
        # its time: the proxy search, then the confirmation runs
        confirm_span = report.study(f"{stage}confirm").wall_seconds
        assert repeat.wall_seconds["confirm"] == pytest.approx(
            repeat.wall_seconds["proxy"] + confirm_span)
        assert confirm_span > 0
        # its test accuracy: the proxy's final runs when the set is the same, else its own
        if repeat.winners["confirm"]["params"] == repeat.winners["proxy"]["params"]:
            assert repeat.test_accuracy["confirm"] == repeat.test_accuracy["proxy"]
        else:
            assert repeat.test_accuracy["confirm"] == report.final(f"{stage}confirm").mean
    stats = report.statistics()
    assert stats["confirm_gap_pp"]["n"] == 2
    assert stats["confirm_gap_pp"]["mean"] == pytest.approx(
        sum(r.gap("confirm") for r in report.repeats) / 2)
    saved = json.loads((Path(config.out) / "report.json").read_text())
    assert "confirm_gap_pp" in saved["repeats"][0]

    from rich.console import Console

    console = Console(record=True, width=80)
    console.print(report)
    text = console.export_text()
    table = text[text.index("Repeats"):]
    assert sum(" confirm " in line for line in table.splitlines()) == 2  # a row per repeat
    assert "gap with --confirm" in text and max(map(len, text.splitlines())) <= 80


def test_confirm_added_to_a_finished_compare_trains_only_what_is_missing(make_config):
    config = make_config(trials=3, epochs=1, seeds=1)
    first = driver.compare(config)
    again = driver.compare(config.replace(confirm=2))
    for name in ("typical", "proxy"):  # the searches are reused, not rerun
        assert ([t.number for t in again.study(name).trials]
                == [t.number for t in first.study(name).trials])
    assert again.repeats[0].test_accuracy["proxy"] == first.repeats[0].test_accuracy["proxy"]
    assert len(_confirm_trials(config)["confirm"]) == 2
    assert again.repeats[0].test_accuracy.get("confirm") is not None


def test_run_with_confirm_trains_the_confirmed_winner(make_config):
    config = make_config(trials=4, epochs=1, seeds=1, confirm=3)
    report = driver.run(config)
    best = json.loads((Path(config.out) / "best.json").read_text())
    confirms = _confirm_trials(config)["confirm"]
    assert len(confirms) == 3
    winner = max(confirms, key=lambda t: (t.value, -t.number))
    assert best["study"] == "confirm" and best["hyperparams"] == winner.user_attrs["hyperparams"]
    assert report.finals[0].params == winner.user_attrs["hyperparams"]
    assert report.finals[0].source == "confirm"
