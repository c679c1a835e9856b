"""``fxprune train-prune``: the model contract, and outputs that never destroy a user's files."""

from __future__ import annotations

import json
import textwrap

from typer.testing import CliRunner

import fxprune
from fxprune.cli import app

runner = CliRunner()

TRAINABLE = textwrap.dedent("""
    from torch import nn

    def build_model(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
""")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_builder_without_num_classes_is_named_with_the_contract(tmp_path):
    model = tmp_path / "fixed.py"
    model.write_text("from torch import nn\ndef build_model():\n    return nn.Linear(3, 2)\n")
    r = run("train-prune", model, "--data", "synthetic", "--epochs", "1", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "Traceback" not in r.output
    text = r.output.strip()
    assert text.startswith("error:") and "build_model(num_classes=10)" in text
    assert "--num-classes" not in text and not (tmp_path / "o").exists()


def test_train_prune_output_is_0755_0644_and_foreign_folders_survive(tmp_path):
    model = tmp_path / "net.py"
    model.write_text(TRAINABLE)
    out = tmp_path / "run"
    r = run("train-prune", model, "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
            "--threads", "1", "--out", out)
    assert r.exit_code == 0, r.output
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {name: 0o644 for name in (
        "slim.pt", "meta.json", "plan.json", "history.json", "train_prune.png", ".fxprune.json")}
    marker = json.loads((out / ".fxprune.json").read_text())
    assert marker["kind"] == "train-prune" and marker["files"] == sorted(
        ["slim.pt", "meta.json", "plan.json", "history.json", "train_prune.png"])
    slim, (x,) = fxprune.load_slim(out)
    assert slim(x).shape == (1, 4)  # synthetic data has 4 classes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = run("train-prune", model, "--data", "synthetic", "--epochs", "1", "--out", mine, "--force")
    assert r.exit_code == 2 and "fxprune did not write" in r.output
    assert (mine / "notes.txt").read_text() == "keep"
    r = run("train-prune", model, "--data", "nonesuch", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "unknown dataset 'nonesuch'" in r.output
