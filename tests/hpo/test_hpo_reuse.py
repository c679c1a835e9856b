"""``compare --typical-from RUN``: a second proxy variant measured against the same typical
arm, imported (never retrained), checked before anything is stored, and safe to resume."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import hpo.train
from fxprune.errors import ConfigError
from hpo import driver
from hpo.cli import hpo_app
from hpo.reuse import IMPORTED, PENDING


@pytest.fixture
def first(make_config, tmp_path):
    """A finished two-repeat compare with rank runs: the source of every import below."""
    config = make_config(trials=3, epochs=1, seeds=1, repeats=2, kendall_k=2,
                         out=str(tmp_path / "first"))
    return config, driver.compare(config)


def _studies(config) -> dict[str, optuna.Study]:
    storage = driver.open_storage(config)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_the_typical_arm_is_imported_and_only_the_proxy_arm_trains(first, tmp_path,
                                                                    monkeypatch):
    source, before = first
    roles: list[str] = []
    original = hpo.train.train_model

    def spy(model, data, hyperparams, epochs, **kwargs):
        size = sum(p.numel() for p in model.parameters())
        roles.append("base" if size == base_params else "proxy")
        return original(model, data, hyperparams, epochs, **kwargs)

    base_params = before.proxy.params_before
    monkeypatch.setattr(hpo.train, "train_model", spy)
    config = source.replace(out=str(tmp_path / "second"), ratio=0.5, typical_from=source.out)
    after = driver.compare(config)

    for repeat in range(2):
        old, new = before.study(f"r{repeat}-typical"), after.study(f"r{repeat}-typical")
        assert [(t.number, t.state, t.value) for t in new.trials] == [
            (t.number, t.state, t.value) for t in old.trials]
        assert new.wall_seconds == old.wall_seconds  # the source's time, as measured there
        assert after.repeats[repeat].test_accuracy["typical"] == \
            before.repeats[repeat].test_accuracy["typical"]
        assert after.repeats[repeat].winners["typical"] == before.repeats[repeat].winners["typical"]
        assert (Path(config.out) / f"base_model_r{repeat}-typical.pt").is_file()
    assert after.proxy.ratio == 0.5 and after.proxy.params_after > before.proxy.params_after
    # base-network training here: the proxy winners' finals and the rank runs' proxy half
    # only; the typical searches (3 trials x 2), their finals and rank-base were imported
    assert roles.count("base") == 2  # one final seed per proxy winner, per repeat
    studies = _studies(config)
    imported = {name for name, s in studies.items() if IMPORTED in s.user_attrs}
    assert imported == {"r0-typical", "r1-typical", "r0-rank-base", "r1-rank-base",
                        *(n for n in studies if n.startswith(("final-r0-typical-",
                                                              "final-r1-typical-")))}
    assert not any(s.user_attrs.get(PENDING) for s in studies.values())
    assert after.config["typical_from"] == source.out

    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(after)
    assert f"imported from {source.out}" in console.export_text()

    trained = len(roles)
    again = driver.compare(config)  # resuming imports nothing twice and trains nothing
    assert len(roles) == trained and again.repeats == after.repeats


def test_a_copy_cut_short_is_redone(first, tmp_path, monkeypatch):
    source, before = first
    config = source.replace(out=str(tmp_path / "second"), repeats=1, kendall_k=0,
                            typical_from=source.out)
    import hpo._optuna

    original = hpo._optuna.copy_into

    def killed(study, target):  # half the trials, then the process dies
        for trial in study.get_trials(deepcopy=False)[:1]:
            hpo._optuna.storage_of(target).create_new_trial(hpo._optuna.study_id(target),
                                                            template_trial=trial)
        raise KeyboardInterrupt

    monkeypatch.setattr(hpo._optuna, "copy_into", killed)
    with pytest.raises(KeyboardInterrupt):
        driver.compare(config)
    monkeypatch.setattr(hpo._optuna, "copy_into", original)
    assert len(_studies(config)) == 1  # the first study copied, cut short
    report = driver.compare(config)
    studies = _studies(config)
    assert not any(s.user_attrs.get(PENDING) for s in studies.values())
    assert [(t.number, t.value) for t in report.study("typical").trials] == [
        (t.number, t.value) for t in before.study("r0-typical").trials]
    assert report.repeats[0].test_accuracy["typical"] == before.repeats[0].test_accuracy["typical"]
    assert (Path(config.out) / "base_model_typical.pt").is_file()


def test_an_empty_study_left_by_a_kill_before_the_mark_is_redone(first, tmp_path):
    source, before = first
    config = source.replace(out=str(tmp_path / "second"), kendall_k=0, typical_from=source.out)
    driver.ProxyHpo(config)._start("compare")  # the run folder is made first, then the copy
    optuna.create_study(study_name="r0-typical", storage=driver.open_storage(config))
    report = driver.compare(config)
    assert [t.value for t in report.study("r0-typical").trials] == [
        t.value for t in before.study("r0-typical").trials]


def test_a_moved_source_is_not_needed_once_imported_and_a_resume_keeps_the_note(first,
                                                                               tmp_path,
                                                                               caplog):
    source, _ = first
    config = source.replace(out=str(tmp_path / "second"), typical_from=source.out)
    first_report = driver.compare(config)
    Path(source.out).rename(tmp_path / "archived")
    with caplog.at_level("WARNING", logger="hpo"):
        again = driver.compare(config.replace(typical_from=None))  # resumed without it
    assert again.repeats == first_report.repeats
    assert again.config["typical_from"] == source.out  # still reported
    assert any("already imported here" in r.getMessage() for r in caplog.records)


def _edit_source_study(config, name, edit) -> None:
    edit(optuna.load_study(study_name=name, storage=driver.open_storage(config)))


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.set_user_attr("fingerprint", {"epochs": 99}), "was run with other options"),
    (lambda s: s.enqueue_trial({}), "has queued trials"),
    (lambda s: s.set_user_attr("budget", 99), "has run 3 of its 99 trials"),
    (lambda s: s.tell(s.ask(), state=optuna.trial.TrialState.FAIL),
     "failed trial(s) that its next run retries"),
])
def test_an_unfinished_or_different_typical_search_is_refused(first, tmp_path, edit, match):
    source, _ = first
    _edit_source_study(source, "r1-typical", edit)
    config = source.replace(out=str(tmp_path / "second"), typical_from=source.out)
    with pytest.raises(ConfigError, match=re.escape(match)):
        driver.compare(config)
    assert not (tmp_path / "second").exists()


def test_study_names_in_a_shared_database(make_config, tmp_path):
    """Several experiments in one database: only the source's --study-name is imported,
    under this run's, and an unprefixed run there is neither taken nor confused with it."""
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    source = make_config(trials=3, epochs=1, seeds=1, storage=database, study_name="X",
                         out=str(tmp_path / "x"))
    before = driver.compare(source)
    other = make_config(mode="typical", sampler="tpe", trials=4, epochs=1, seeds=1,
                        storage=database, out=str(tmp_path / "plain"))
    driver.run(other)  # studies "typical", "final-typical-..." without a prefix
    target = source.replace(study_name="Y", out=str(tmp_path / "y"), typical_from=source.out)
    after = driver.compare(target)
    assert after.repeats[0].winners["typical"] == before.repeats[0].winners["typical"]
    assert after.repeats[0].test_accuracy["typical"] == before.repeats[0].test_accuracy["typical"]
    names = set(_studies(target))
    assert {"Y:typical", "Y:proxy"} <= names
    unprefixed = source.replace(study_name=None, out=str(tmp_path / "z"),
                                typical_from=source.out)
    with pytest.raises(ConfigError, match="is this run's own, not imported; use another "
                                          "--study-name"):
        driver.compare(unprefixed)  # the plain run's typical search already has that name
    driver.compare(target)  # resumes


@pytest.mark.parametrize("change, match", [
    ({"epochs": 2}, "was run with epochs=1, this run asks 2"),
    ({"sampler": "tpe"}, "was run with sampler='random'"),
    ({"typical_from": "{tmp}/nowhere"}, "is not an HPO run folder"),
    ({"typical_from": "{tmp}/second"}, "is this run's own --out"),
    ({"data": "digits"}, "was run with data='synthetic'"),
])
def test_an_incompatible_source_is_refused_before_anything_is_stored(first, tmp_path, change,
                                                                       match):
    source, _ = first
    change = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in change.items()}
    config = source.replace(**{"out": str(tmp_path / "second"), "typical_from": source.out,
                               **change})
    with pytest.raises(ConfigError, match=match):
        driver.compare(config)
    assert not (tmp_path / "second").exists()


def test_a_run_folder_or_a_run_of_its_own_is_refused(first, make_config, tmp_path):
    source, _ = first
    single = make_config(trials=2, epochs=1, seeds=0, out=str(tmp_path / "single"))
    driver.run(single)
    config = source.replace(out=str(tmp_path / "second"), typical_from=single.out)
    with pytest.raises(ConfigError, match="is a 'run' folder, not a compare"):
        driver.compare(config)
    with pytest.raises(ConfigError, match="use it with compare"):
        driver.run(single.replace(typical_from=source.out, out=str(tmp_path / "x")))
    # a compare that searched its own typical arm does not take another one in
    own = source.replace(out=str(tmp_path / "own"), kendall_k=0)
    driver.compare(own)
    with pytest.raises(ConfigError, match="is this run's own, not imported"):
        driver.compare(own.replace(typical_from=source.out))


def test_cli_typical_from_a_missing_folder_is_one_line(model_file: Path, tmp_path: Path):
    result = CliRunner().invoke(hpo_app, [
        "compare", str(model_file), "--data", "synthetic", "--trials", "2", "--epochs", "1",
        "--seeds", "1", "--quiet", "--out", str(tmp_path / "c"),
        "--typical-from", str(tmp_path / "nowhere")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "--typical-from" in result.output and "not an HPO run folder" in result.output
    assert not (tmp_path / "c").exists()
