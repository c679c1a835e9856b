"""``fxprune hpo`` through typer's CliRunner: a run, the report command, and one clear
line with a non-zero exit code (never a traceback) for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpo.cli import hpo_app

FAST = ["--data", "synthetic", "--trials", "2", "--epochs", "2", "--sampler", "random",
        "--pruner", "none", "--threads", "1", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(hpo_app, [str(a) for a in args])


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert match in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert isinstance(result.exception, SystemExit)


def test_run_then_report(model_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = invoke("run", model_file, *FAST, "--seeds", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "HPO studies" in result.output and "best set of proxy" in result.output
    for name in ("journal.log", "best.json", "report.json", "config.json", "base_model.pt",
                 "history_proxy.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["finals"][0]["source"] == "proxy"

    (out / "report.json").unlink()
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["studies"] == saved["studies"]


def test_space_file_reaches_the_study(model_file: Path, tmp_path: Path):
    space = tmp_path / "space.toml"
    space.write_text("lr = 0.05\nbatch_size = 32\nweight_decay = [1e-4, 1e-3]\n")
    out = tmp_path / "run"
    result = invoke("run", model_file, *FAST, "--seeds", "0", "--space", space, "--out", out)
    assert result.exit_code == 0, result.output
    trials = json.loads((out / "report.json").read_text())["studies"][0]["trials"]
    assert all(t["params"]["lr"] == 0.05 and t["params"]["batch_size"] == 32 for t in trials)


@pytest.mark.parametrize("args, match", [
    (["--data", "cifar10"], "pass --data-dir PATH"),
    (["--data", "cifar10", "--data-dir", "{tmp}/nowhere"], "data folder not found"),
    (["--data", "tinyimagenet", "--data-dir", "{tmp}"], "no train/ folder"),
    (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--storage", "hpo.db"], "is not a database URL"),
    (["--space", "{tmp}/missing.toml"], "search-space file not found"),
    (["--confirm", "-1"], "--confirm must be 0 (off) or more"),
    (["--confirm", "2", "--mode", "typical"], "use it with --mode proxy"),
    (["--proxy-lr", "mup"], "--proxy-lr 'mup': choose one of same, fan-in"),
    (["--seed", "-1"], "--seed must be in [0, 1073741824)"),
    (["--seed", "5000000000"], "--seed must be in [0, 1073741824)"),
])
def test_user_mistakes_are_one_red_line(model_file: Path, tmp_path: Path, args, match):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke("run", model_file, "--out", tmp_path / "run", "--quiet", *args)
    assert_one_line_error(result, match)


def test_a_missing_model_file_is_one_line(tmp_path: Path):
    result = invoke("run", tmp_path / "nope.py", "--data", "synthetic", "--quiet",
                    "--out", tmp_path / "run")
    assert_one_line_error(result, "model file not found")


def test_unknown_choices_are_usage_errors(model_file: Path):
    for option, value in (("--sampler", "bohb"), ("--pruner", "asha"), ("--mode", "fast")):
        result = invoke("run", model_file, option, value)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "Invalid value" in result.output


def test_report_and_final_need_a_run_folder(model_file: Path, tmp_path: Path):
    assert_one_line_error(invoke("report", tmp_path), "is not an HPO run folder")
    result = invoke("run", model_file, "--mode", "final", "--data", "synthetic", "--quiet",
                    "--out", tmp_path / "run")
    assert_one_line_error(result, "--mode final needs")
    assert not (tmp_path / "run").exists()  # refused before anything is written

    # a compare folder trains its own winners: its config.json and report stay as they are
    folder = tmp_path / "compare"
    folder.mkdir()
    saved = json.dumps({"command": "compare", "config": {"model": str(model_file), "repeats": 3}})
    (folder / "config.json").write_text(saved)
    (folder / "best.json").write_text(json.dumps(
        {"proxy": {"mode": "proxy", "hyperparams": {"lr": 0.01}}}))
    result = invoke("run", model_file, "--mode", "final", "--data", "synthetic", "--quiet",
                    "--out", folder)
    assert_one_line_error(result, "holds a compare, which trains its winners itself")
    assert (folder / "config.json").read_text() == saved
    assert sorted(p.name for p in folder.iterdir()) == ["best.json", "config.json"]


def test_a_folder_of_other_files_is_never_written_into(model_file: Path, tmp_path: Path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"lr": 0.1}')  # the user's own, not an HPO run's
    (folder / "journal.log").write_text("day 1")  # no final newline: not ours to "repair"
    source = tmp_path / "source"  # --typical-from opens this run's journal: not before
    for command, extra in (("run", ()), ("compare", ()), ("compare", ("--typical-from", source))):
        result = invoke(command, model_file, *FAST, *extra, "--out", folder)
        assert_one_line_error(result, "holds a config.json that is not an HPO run's")
    (folder / "config.json").unlink()
    assert_one_line_error(invoke("run", model_file, *FAST, "--out", folder),
                          "holds a journal.log that is not an HPO run's")
    assert sorted(p.name for p in folder.iterdir()) == ["journal.log"]
    assert (folder / "journal.log").read_text() == "day 1"


def test_a_folder_with_a_log_in_it_is_a_new_run_folder(model_file: Path, tmp_path: Path):
    folder = tmp_path / "slurm"  # sbatch --output=slurm/%j.out makes the log first
    folder.mkdir()
    (folder / "123.out").write_text("starting\n")
    result = invoke("run", model_file, *FAST, "--seeds", "0", "--out", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "123.out").read_text() == "starting\n"
    assert (folder / "config.json").is_file() and (folder / "best.json").is_file()


def test_compare_needs_seeds(model_file: Path, tmp_path: Path):
    result = invoke("compare", model_file, *FAST, "--seeds", "0", "--out", tmp_path / "c")
    assert_one_line_error(result, "--seeds must be >= 1")
