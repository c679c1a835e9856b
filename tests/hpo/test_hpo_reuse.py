"""``compare --typical-from RUN``: a second proxy variant measured against the same typical
arm, imported (never retrained), checked before anything is stored, and safe to resume."""

from __future__ import annotations

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


def test_a_copy_cut_short_is_redone(first, tmp_path):
    source, before = first
    config = source.replace(out=str(tmp_path / "second"), repeats=1, kendall_k=0,
                            typical_from=source.out)
    driver.compare(config)
    study = _studies(config)["typical"]  # one repeat: the first release's names
    study.set_user_attr(PENDING, True)  # as if killed while copying
    report = driver.compare(config)
    study = _studies(config)["typical"]
    assert study.user_attrs[PENDING] is False
    assert [t.value for t in report.study("typical").trials] == [
        t.value for t in before.study("r0-typical").trials]


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
