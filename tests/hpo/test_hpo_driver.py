"""The HPO driver: samplers and pruners, the proxy network, resume after a crash, budget,
local workers, failing trials, Hyperband settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from rich.console import Console

import hpo.network
import hpo.train
from fxprune.errors import ConfigError, FxPruneError
from hpo import _optuna, driver, worker
from hpo.config import fingerprint_changes
from hpo.driver import HpoConfig, NetworkFactory, hyperband_settings
from hpo.space import SearchSpace


def load(config: HpoConfig, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=driver.open_storage(config))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials()
            if t.state.is_finished() and not str(t.user_attrs.get("reason", "")).startswith(
                "interrupted")]


@pytest.mark.parametrize("sampler", sorted(driver.SAMPLERS))
def test_every_sampler_runs_with_hyperband(make_config, sampler: str):
    config = make_config(sampler=sampler, pruner="hyperband", trials=5, epochs=3)
    report = driver.run(config)
    study = load(config, "proxy")
    assert len(finished(study)) == 5
    assert set(states(study)) <= {"COMPLETE", "PRUNED"}
    assert "COMPLETE" in states(study)
    assert report.study("proxy").best_value == max(
        t.value for t in study.get_trials() if t.state == TrialState.COMPLETE)
    best = json.loads((Path(config.out) / "best.json").read_text())
    assert best["mode"] == "proxy" and best["value"] == report.study("proxy").best_value
    assert (Path(config.out) / "report.json").is_file()
    assert (Path(config.out) / "history_proxy.png").stat().st_size > 1000


@pytest.mark.parametrize("pruner", ["median", "none"])
def test_every_pruner_runs(make_config, pruner: str):
    config = make_config(mode="typical", sampler="tpe", pruner=pruner, trials=6, epochs=4)
    driver.run(config)
    study = load(config, "typical")
    assert len(finished(study)) == 6
    assert all(len(t.intermediate_values) >= 1 for t in study.get_trials())
    if pruner == "none":
        assert states(study) == ["COMPLETE"] * 6


def test_hyperband_defaults_give_the_documented_brackets():
    for trials, epochs, brackets in [(10, 160, 1), (50, 160, 2), (100, 160, 3), (50, 2, 1),
                                     (30, 4, 2), (100, 9, 3), (12, 6, 1)]:
        settings = hyperband_settings(trials, epochs)
        assert settings["brackets"] == brackets, (trials, epochs)
        pruner = driver.PRUNERS["hyperband"](trials, epochs)
        study = optuna.create_study(direction="maximize", pruner=pruner)
        trial = study.ask()
        trial.report(0.5, 1)
        trial.should_prune()  # initialises the pruner's brackets
        assert pruner._n_brackets == brackets, (trials, epochs)


def test_one_epoch_searches_run_without_a_pruner():
    # the worker and the report both read this: a one-epoch trial has nothing to stop
    assert HpoConfig(model="m", pruner="hyperband", epochs=1).search_pruner == "none"
    assert HpoConfig(model="m", pruner="hyperband", epochs=2).search_pruner == "hyperband"
    assert HpoConfig(model="m", pruner="median", epochs=5).search_pruner == "median"


def test_proxy_trains_a_slim_reinitialised_network(make_config, monkeypatch):
    config = make_config(mode="proxy", trials=2)
    data = driver.load_data(config)
    factory = NetworkFactory(config, data, "proxy")
    count = lambda model: sum(p.numel() for p in model.parameters())
    assert count(factory.template) < 0.5 * count(factory.base)
    assert factory.proxy_info.params_after == count(factory.template)

    # trial networks: the slim shapes, weights drawn afresh from the trial's seed
    pruned, trained = factory.template.state_dict(), factory.make(seed=11).state_dict()
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in trained.items()}
    weights = [k for k, v in pruned.items() if k.endswith("weight") and v.dim() > 1]
    assert weights and all(not torch.equal(pruned[k], trained[k]) for k in weights)
    assert all(torch.equal(trained[k], factory.make(seed=11).state_dict()[k]) for k in weights)

    # and the run trains exactly those networks
    sizes: list[int] = []
    real_train = hpo.train.train_model

    def spy(model, *args, **kwargs):
        sizes.append(count(model))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(hpo.train, "train_model", spy)
    report = driver.run(config)
    assert sizes == [count(factory.template)] * 2
    assert report.proxy.params_after < report.proxy.params_before


class SimulatedCrash(BaseException):
    """Not an Exception: like a kill, nothing in the driver records it."""


def crash_on_call(monkeypatch, call: int) -> None:
    real_train, calls = hpo.train.train_model, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise SimulatedCrash
        return real_train(*args, **kwargs)

    monkeypatch.setattr(hpo.train, "train_model", train)


def test_resume_after_a_crash_neither_loses_nor_repeats_trials(make_config, monkeypatch,
                                                                tmp_path: Path):
    config = make_config(mode="typical")
    crash_on_call(monkeypatch, call=3)
    with pytest.raises(SimulatedCrash):
        driver.run(config)
    study = load(config, "typical")
    assert states(study) == ["COMPLETE", "COMPLETE", "RUNNING"]
    before = [t.params for t in study.get_trials()]
    monkeypatch.undo()

    driver.run(config)
    trials = load(config, "typical").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4  # the budget, exactly
    assert [t.params for t in trials[:2]] == before[:2]  # kept, not re-run
    interrupted = trials[2]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["reason"].startswith("interrupted")
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 2]
    assert len(retried) == 1 and retried[0].params == before[2]
    assert retried[0].user_attrs["seed"] == interrupted.user_attrs["seed"]
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 4  # none repeated

    # an uninterrupted run proposes the same first three points
    clean = make_config(mode="typical", out=str(tmp_path / "clean"))
    driver.run(clean)
    assert [t.params for t in load(clean, "typical").get_trials()[:3]] == before

    # re-running a finished folder trains nothing more
    driver.run(config)
    assert len(load(config, "typical").get_trials()) == len(trials)


KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    import torch
    torch.set_num_threads(1)
    import hpo.train
    from hpo import driver
    from hpo.driver import HpoConfig

    real_train, calls = hpo.train.train_model, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(600)  # the test kills us here, mid-trial
        return real_train(*args, **kwargs)

    hpo.train.train_model = train
    driver.run(HpoConfig.from_dict(__import__("json").loads(sys.argv[1])))
''')


def test_sigkill_mid_trial_then_resume(make_config):
    config = make_config(mode="typical", trials=4)
    args = [sys.executable, "-c", KILL_SCRIPT, json.dumps(config.to_dict())]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = Path(config.out) / "journal.log"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if journal.is_file() and states(load(config, "typical")) == [
                    "COMPLETE", "COMPLETE", "RUNNING"]:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.5)
        else:
            pytest.fail("the study never reached its third trial")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    driver.run(config)
    study = load(config, "typical")
    assert len([t for t in study.get_trials() if t.state == TrialState.COMPLETE]) == 4
    assert study.get_trials()[2].user_attrs["reason"].startswith("interrupted")


def test_a_torn_journal_line_is_cut_before_resuming(make_config):
    config = make_config(mode="typical", trials=2)
    driver.run(config)
    journal = Path(config.out) / "journal.log"
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code": 4, "worker_id": "x", "trial_id"')  # killed mid-append
    driver.run(config.replace(trials=3))
    assert len(finished(load(config, "typical"))) == 3


def test_two_local_workers_share_one_study(make_config, model_file: Path):
    config = make_config(model=f"{model_file}:slow_model", mode="typical", trials=6, workers=2)
    driver.run(config)
    trials = load(config, "typical").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2 and os.getpid() not in owners
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6


def test_a_diverging_trial_is_recorded_and_the_study_goes_on(make_config):
    # lr up to 1e12 (with seed 2 the first point is ~0.02, the second ~2e9 and diverges)
    space = SearchSpace(lr=(1e-2, 1e12), batch_size=64)
    config = make_config(mode="typical", space=space, seed=2, trials=4)
    report = driver.run(config)
    trials = load(config, "typical").get_trials()
    assert len(trials) == 4
    diverged = [t for t in trials if "diverged" in t.user_attrs.get("reason", "")]
    assert diverged and all(t.state == TrialState.PRUNED and t.value == 0.0 for t in diverged)
    assert trials[0].state == TrialState.COMPLETE
    assert report.study("typical").best_trial == 0
    records = {r.number: r for r in report.study("typical").trials}
    assert records[diverged[0].number].reason.startswith("diverged: loss=")


def test_a_raising_trial_fails_and_counts_toward_the_budget(make_config, monkeypatch):
    real_train, calls = hpo.train.train_model, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(hpo.train, "train_model", train)
    driver.run(make_config(mode="typical", trials=4))
    trials = load(make_config(), "typical").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["reason"] == (
        "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert trials[2].user_attrs["reason"].startswith("out of memory: CUDA out of memory")


def test_user_errors_stop_the_run(make_config, monkeypatch):
    def train(*args, **kwargs):
        raise FxPruneError("images/0.JPEG: cannot decode image")

    monkeypatch.setattr(hpo.train, "train_model", train)
    with pytest.raises(FxPruneError, match="cannot decode"):
        driver.run(make_config(mode="typical"))
    assert states(load(make_config(), "typical")) == ["FAIL"]


def test_resuming_with_other_options_is_refused(make_config):
    driver.run(make_config(mode="typical", trials=1))
    driver.run(make_config(mode="typical", trials=2))  # a bigger budget is fine
    with pytest.raises(ConfigError, match="epochs=2, this run asks 3"):
        driver.run(make_config(mode="typical", trials=2, epochs=3))
    # a search is not resumed by another sampler or pruner either
    with pytest.raises(ConfigError, match="sampler='random', this run asks 'tpe'"):
        driver.run(make_config(mode="typical", trials=2, sampler="tpe"))
    with pytest.raises(ConfigError, match="pruner='none', this run asks 'median'"):
        driver.run(make_config(mode="typical", trials=2, pruner="median"))


def test_studies_stored_before_the_search_keys_still_resume():
    config = HpoConfig(model="m")
    old = config.fingerprint("base", "d")  # what a search study stored before
    new = config.fingerprint("base", "d", search=True)
    assert new == {**old, "sampler": "tpe", "pruner": "hyperband"}
    assert fingerprint_changes(old, new) == []
    assert fingerprint_changes(new, config.replace(sampler="gp").fingerprint(
        "base", "d", search=True)) == ["sampler"]
    assert fingerprint_changes(old, config.replace(epochs=3).fingerprint(
        "base", "d", search=True)) == ["epochs"]


def test_final_mode_trains_the_base_network_with_best_json(make_config, model_file: Path):
    config = make_config(mode="proxy", trials=2)
    driver.run(config)
    best = json.loads((Path(config.out) / "best.json").read_text())
    report = driver.run(config.replace(mode="final", seeds=2))
    final = report.final("proxy")
    # final seeds are disjoint from the search trials' seeds (issue 12: no replayed trial)
    assert final.seeds == (1_000_000, 1_000_001) and len(final.accuracies) == 2
    assert final.params == best["hyperparams"]
    state = torch.load(Path(config.out) / "base_model.pt")
    from fxprune.loading import load_model

    base, _ = load_model(str(model_file), input_shape=(1, 3, 8, 8), num_classes=4)
    base.load_state_dict(state)  # the *base* network, at full width


def test_compare_reports_time_gap_and_tau(make_config, monkeypatch):
    monkeypatch.setitem(hpo.network.STEP_TIMING_SECONDS, "max_seconds", 1.0)  # keep it quick
    config = make_config(trials=3, seeds=2, kendall_k=3)
    report = driver.compare(config)
    assert {s.name for s in report.studies} == {"typical", "proxy"}
    assert report.time_reduction_pct is not None
    assert report.accuracy_gap == pytest.approx(
        100 * (report.final("proxy").mean - report.final("typical").mean))
    assert len(report.rank.params) == 3
    assert all(score is not None for score in report.rank.base_scores + report.rank.proxy_scores)
    saved = json.loads((Path(config.out) / "report.json").read_text())
    assert saved["kind"] == "compare" and saved["accuracy_gap_pp"] == pytest.approx(
        report.accuracy_gap)
    assert set(json.loads((Path(config.out) / "best.json").read_text())) == {"typical", "proxy"}
    # the proxy's measured training-step speed-up sits next to its MACs reduction
    step = saved["proxy"]["step_time"]
    dense_ms, slim_ms = step["dense"]["stat"]["median_ms"], step["slim"]["stat"]["median_ms"]
    assert step["speedup"] == pytest.approx(dense_ms / slim_ms) and step["speedup"] > 0
    assert step["dense"]["batch"] == 64 and saved["proxy"]["flops_fraction"] < 1
    console = Console(width=200, record=True, color_system=None)
    console.print(report)
    assert f"speed-up {step['speedup']:.2f}x over the base network" in console.export_text()
    for name in ("base_model_typical.pt", "base_model_proxy.pt"):
        assert (Path(config.out) / name).is_file()
    # the same configurations on both networks
    base = load(config, "rank-base").get_trials()
    proxy = load(config, "rank-proxy").get_trials()
    assert [t.user_attrs["hyperparams"] for t in base] == [
        t.user_attrs["hyperparams"] for t in proxy]


def _fake_step_time(speedup: float, seen: list[int], config: HpoConfig, device: str = "cuda"):
    """A stand-in for ``proxy_step_time`` that records how many proxy trials existed."""

    def measure(config_, data):
        name = config.study("proxy")
        names = {s.study_name for s in optuna.get_all_study_summaries(driver.open_storage(config))}
        seen.append(len(load(config, name).get_trials()) if name in names else -1)
        stat = {"median_ms": 10.0}
        return {"dense": {"device": device, "batch": 32, "stat": stat},
                "slim": {"device": device, "batch": 32, "stat": {"median_ms": 10.0 / speedup}},
                "speedup": speedup, "speedup_ci": None, "verdict": "faster"}

    return measure


@pytest.mark.parametrize("speedup, warned, device", [(1.08, True, "cuda"), (1.25, True, "cpu"),
                                                    (3.0, False, "cuda")])
def test_proxy_step_time_is_checked_before_the_search_and_warns_when_slow(
        make_config, monkeypatch, caplog, speedup, warned, device):
    # On an H200 a 28 px ResNet-20 proxy stepped only 1.08x faster than its base network:
    # a user should hear that before the search, not find it in the report afterwards.
    config = make_config(mode="proxy", trials=1, epochs=1, seeds=0)
    seen: list[int] = []
    monkeypatch.setattr(driver, "proxy_step_time", _fake_step_time(speedup, seen, config, device))
    with caplog.at_level("WARNING", logger="hpo"):
        report = driver.run(config)
    assert seen == [0]  # measured once, when the proxy study existed but no trial had run
    lines = [r.getMessage() for r in caplog.records if "faster than the base" in r.getMessage()]
    if warned:
        assert len(lines) == 1 and f"{speedup:.2f}x" in lines[0] and f"{device}, batch 32" in lines[0]
        assert "\n" not in lines[0]
        # the GPU explanation only where the device is a GPU
        assert ("per-kernel overheads" in lines[0]) == (device == "cuda")
    else:
        assert lines == []
    assert report.proxy.step_time["speedup"] == speedup  # the report shows what was measured
    with caplog.at_level("WARNING", logger="hpo"):
        driver.run(config)  # resumed: the stored measurement is reused, not retaken
    assert seen == [0]


def test_proxy_lr_fan_in_reaches_proxy_trials_and_not_the_base_network(make_config,
                                                                       monkeypatch):
    seen: list[tuple[str, dict]] = []
    original = hpo.train.train_model

    def spy(model, data, hyperparams, epochs, **kwargs):
        seen.append((kwargs["eval_split"], dict(kwargs.get("lr_scales") or {})))
        return original(model, data, hyperparams, epochs, **kwargs)

    monkeypatch.setattr(hpo.train, "train_model", spy)
    config = make_config(mode="proxy", trials=2, epochs=1, seeds=1, proxy_lr="fan-in")
    driver.run(config)
    search = [scales for split, scales in seen if split == "val"]
    final = [scales for split, scales in seen if split == "test"]
    assert len(search) == 2 and len(final) == 1
    assert all(scales and min(scales.values()) > 1 for scales in search)
    assert final == [{}]  # the winner trains the base network at its own lr


def test_digits_run(make_config):
    config = make_config(data="digits", mode="typical", trials=2, epochs=1)
    report = driver.run(config)
    # HPO holds a test split out (issue 12): digits is 60/20/20 instead of 80/20
    assert report.data["input_shape"] == [3, 16, 16] and report.data["train"] == 1077
    assert (report.data["val"], report.data["test"]) == (360, 360)
    assert len(finished(load(config, "typical"))) == 2


def test_resnet20_proxy_on_digits_is_slim(make_config):
    config = make_config(model="fxprune:resnet20", data="digits")
    factory = NetworkFactory(config, driver.load_data(config), "proxy")
    info = factory.proxy_info
    assert info.scorer == "synflow" and (info.ratio, info.min_ratio) == (0.85, 0.15)
    assert info.params_after < 0.1 * info.params_before
    assert info.flops_after < 0.2 * info.flops_before
    logits = factory.make(seed=3)(torch.zeros(2, 3, 16, 16))
    assert logits.shape == (2, 10)


def test_package_exports():
    import hpo

    for name in hpo.__all__:
        assert getattr(hpo, name) is not None
    assert hpo.HpoConfig is HpoConfig


def _brackets(pruner, study, trials: int = 20) -> list[int]:
    from types import SimpleNamespace

    return [_optuna.bracket_id(pruner, study, SimpleNamespace(number=n)) for n in range(trials)]


def test_both_arms_of_a_repeat_share_hyperbands_brackets():
    # Optuna draws a trial's bracket from the study NAME: at 20 trials x 5 epochs "typical"
    # put 17 of 20 trials in the aggressive bracket and "proxy" 12, so every single-repeat
    # compare pruned its typical search harder (about 20% fewer epochs).
    study = optuna.create_study(direction="maximize")
    by_name = {}
    for name in ("typical", "proxy"):
        pruner = driver.PRUNERS["hyperband"](20, 5, None)
        study_named = optuna.create_study(study_name=name, direction="maximize")
        by_name[name] = _brackets(pruner, study_named)
    assert by_name["typical"] != by_name["proxy"]
    assert by_name["typical"].count(0) == 17 and by_name["proxy"].count(0) == 12
    shared = [_brackets(driver.PRUNERS["hyperband"](20, 5, "seed0-repeat0"), study)
              for _ in range(2)]
    assert shared[0] == shared[1] and set(shared[0]) == {0, 1}
    assert _brackets(driver.PRUNERS["hyperband"](20, 5, "seed0-repeat1"), study) != shared[0]


def test_compare_searches_get_the_repeats_bracket_key(make_config, monkeypatch):
    passed: list[str | None] = []
    real = worker.PRUNERS["hyperband"]

    def spy(trials, epochs, key=None):
        passed.append(key)
        return real(trials, epochs, key)

    monkeypatch.setitem(worker.PRUNERS, "hyperband", spy)
    config = make_config(pruner="hyperband", trials=2, epochs=2, seeds=1, repeats=2)
    report = driver.compare(config)
    # one worker per search; planned stages (finals) are never pruned
    assert sorted(passed) == ["seed0-repeat0"] * 2 + ["seed0-repeat1"] * 2
    stored = {name: load(config, name).user_attrs.get("bracket_key")
              for name in ("r0-typical", "r0-proxy", "r1-typical", "r1-proxy")}
    assert stored == {"r0-typical": "seed0-repeat0", "r0-proxy": "seed0-repeat0",
                      "r1-typical": "seed0-repeat1", "r1-proxy": "seed0-repeat1"}
    assert [r.shared_brackets for r in report.repeats] == [True, True]
    assert report.study("r1-proxy").bracket_key == "seed0-repeat1"
    saved = json.loads((Path(config.out) / "report.json").read_text())
    assert [r["shared_brackets"] for r in saved["repeats"]] == [True, True]
    # a study made before bracket keys drew its brackets by name; with one bracket (2 trials)
    # that cannot differ, so the repeat still counts as like for like (hpo/test_hpo_report.py
    # has the two-bracket case)
    load(config, "r1-typical").set_user_attr("bracket_key", None)
    report = driver.collect_report(config, "compare")
    assert report.study("r1-typical").bracket_key is None
    assert [r.shared_brackets for r in report.repeats] == [True, True]
