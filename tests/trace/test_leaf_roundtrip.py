"""A model with leaves (an untraceable block, a custom autograd function) goes through
prune -> save -> load in a fresh interpreter -> ONNX export, through the API and the CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fxprune

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        """Python control flow on a size: torch.fx cannot trace it, ONNX export can."""

        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            if x.shape[-1] > 1000:
                return x
            return torch.relu(self.conv(x))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
            self.block = Block(8)
            self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.head(torch.relu(self.conv3(self.block(y))))


    def build_model():
        torch.manual_seed(0)
        return Net().eval()


    def example_inputs():
        return torch.randn(1, 3, 16, 16)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "leafy_user_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("leafy_user_model")
    yield module
    sys.modules.pop("leafy_user_model", None)


def fresh_python(code: str, cwd, **env) -> str:
    """Run ``code`` in a new interpreter whose only extra path is ``cwd`` (the user's folder)."""
    environment = {**os.environ, "PYTHONPATH": str(cwd), **env}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_api_leaf_model_saves_loads_fresh_and_exports(user_module, tmp_path):
    model = user_module.build_model()
    x = user_module.example_inputs()
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert [leaf.qualname for leaf in fxprune.trace.leaves_of(result.graph.gm)] == ["block"]
    assert result.params_after < result.params_before
    out = tmp_path / "slim"
    fxprune.save_slim(result.model, out, x)
    with torch.no_grad():
        expected = result.model(x)
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import torch, fxprune
        model, _ = fxprune.load_slim({str(out)!r})
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            print(float(model(x).double().sum()))
        print(type(model.block).__module__, [l.qualname for l in fxprune.trace.leaves_of(model)])
    """)
    total, where = fresh_python(code, tmp_path).splitlines()
    assert abs(float(total) - float(expected.double().sum())) < 1e-4
    assert where == "leafy_user_model ['block']"

    from fxprune.deploy import export_onnx

    report = export_onnx(result.model, x, tmp_path / "slim.onnx")  # raises unless parity holds
    assert (tmp_path / "slim.onnx").is_file()
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-3


def test_cli_leaf_model_round_trip(user_module, tmp_path):
    """fxprune prune FILE.py --leaf Block --out DIR: the slim model loads in a fresh
    interpreter started in the user's folder (where the model file is importable)."""
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "fxprune.cli", "prune", str(tmp_path / "leafy_user_model.py"),
           "--leaf", "Block", "--ratio", "0.5", "--scorer", "l1", "--out", str(out)]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params_after"] < summary["params_before"]
    code = textwrap.dedent(f"""
        import torch, fxprune
        model, inputs = fxprune.load_slim({str(out)!r})
        with torch.no_grad():
            print(tuple(model(*inputs).shape), type(model.block).__module__)
    """)
    assert fresh_python(code, tmp_path).split() == ["(1,", "4,", "16,", "16)", "leafy_user_model"]
    # and the slim folder exports (a fresh process again: the leaf class comes from the file)
    exported = subprocess.run([sys.executable, "-m", "fxprune.cli", "export", str(out), "--out",
                               str(tmp_path / "slim.onnx")], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                              check=False)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "slim.onnx").stat().st_size > 1000
