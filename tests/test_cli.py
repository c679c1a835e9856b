"""The CLI through typer's runner: every command and the bad inputs a user can make."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import fxprune
from fxprune.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def one_line_error(result, fragment: str):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = result.output.strip()
    assert fragment in text, text
    assert text.startswith("error:"), text


MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def example_inputs():
        return torch.randn(2, 3, 16, 16)
""")


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(MODEL_FILE)
    return p


def test_models_lists_builtins():
    r = run("models")
    assert r.exit_code == 0 and "fxprune:resnet56" in r.output


def test_inspect_table_and_json(model_file, tmp_path):
    out = tmp_path / "inspect.json"
    r = run("inspect", model_file, "--json", out)
    assert r.exit_code == 0, r.output
    assert "channel groups" in r.output and "prunable" in r.output and "frozen" in r.output
    data = json.loads(out.read_text())
    sizes = [g["size"] for g in data["groups"] if g["prunable"]]
    assert sizes == [16, 8]
    assert abs(sum(g["flops_share"] for g in data["groups"]) - 1.0) < 0.05


def test_inspect_reports_unhandled_ops(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            def forward(self, x):
                return self.b(torch.cumsum(self.a(x), 1))
        model = M()
    """))
    r = run("inspect", p, "--input-shape", "1,3,8,8")
    assert r.exit_code == 0, r.output
    assert "ops that froze channels" in r.output and "cumsum" in r.output


def test_prune_writes_loadable_folder(model_file, tmp_path):
    out = tmp_path / "slim"
    r = run("prune", model_file, "--ratio", "0.5", "--min-ratio", "0.2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "equivalence: ok" in r.output
    assert {p.name for p in out.iterdir()} == {"slim.pt", "meta.json", "plan.json", "summary.json"}
    model, inputs = fxprune.load_slim(out)
    assert model(inputs[0]).shape == (2, 4)
    # loadable by torch alone, in a fresh interpreter without fxprune or the model file
    code = (f"import sys, torch; sys.modules['fxprune'] = None; "
            f"m = torch.load({str(out / 'slim.pt')!r}, weights_only=False); "
            f"print(tuple(m(torch.randn(3, 3, 16, 16)).shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.stdout.strip() == "(3, 4)", done.stderr[-500:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["scorer"] == "synflow" and plan["modules"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params_after"] < summary["params_before"]
    # an existing folder is refused without --force, replaced with it
    r = run("prune", model_file, "--out", out)
    one_line_error(r, "already exists")
    r = run("prune", model_file, "--out", out, "--force", "--scorer", "l1")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "plan.json").read_text())["settings"]["scorer"] == "l1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prune_builtin_with_flops_target(tmp_path):
    r = run("prune", "fxprune:resnet20", "--target", "flops=0.5", "--scorer", "l1")
    assert r.exit_code == 0, r.output
    assert "MACs" in r.output


@pytest.mark.parametrize("args,fragment", [
    (["prune", "missing.py"], "not found"),
    (["prune", "fxprune:nonexistent"], "nonexistent"),
    (["prune", "torchvision:not_a_model"], "not_a_model"),
    (["prune", "fxprune:resnet20", "--ratio", "1.5"], "ratio"),
    (["prune", "fxprune:resnet20", "--min-ratio", "-0.1"], "min_ratio"),
    (["prune", "fxprune:resnet20", "--input-shape", "1,5,32,32"], "input"),
    (["prune", "fxprune:resnet20", "--input-shape", "1,x,32"], "shape"),
    (["prune", "fxprune:resnet20", "--scorer", "bogus"], "unknown scorer"),
    (["prune", "fxprune:resnet20", "--target", "latency=3"], "target"),
    (["inspect", "fxprune:resnet20", "--leaf", "NoSuchModule"], "NoSuchModule"),
])
def test_bad_input_one_line(args, fragment, tmp_path):
    one_line_error(run(*args), fragment)


def test_file_without_model_and_untraceable(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    one_line_error(run("prune", empty, "--input-shape", "1,3,8,8"), "build_model")
    bad = tmp_path / "flow.py"
    bad.write_text(textwrap.dedent("""
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(3, 3, 1)
            def forward(self, x):
                if x.mean() > 0:
                    return self.c(x)
                return x
        model = M()
    """))
    r = run("prune", bad, "--input-shape", "1,3,8,8", "--out", tmp_path / "o")
    one_line_error(r, "leaf")
    assert "flow.py" in r.output
    assert not (tmp_path / "o").exists()
