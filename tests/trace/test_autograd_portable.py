"""A slim model that keeps a custom ``torch.autograd.Function`` as a call loads in a fresh
interpreter where fxprune cannot be imported (torch and the user's module only), and its
gradients there are those of the slim model that was saved (the user's ``backward`` runs).
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fxprune
from fxprune.trace import AutogradFunctionCall

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class RoundSTE(torch.autograd.Function):
        """Straight-through quantiser: round in forward, identity gradient in backward."""

        @staticmethod
        def forward(ctx, x, scale):
            return torch.round(x * scale) / scale

        @staticmethod
        def backward(ctx, grad):
            return grad, None


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
            self.conv3 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv3(RoundSTE.apply(self.conv2(torch.relu(self.conv1(x))), 4.0))


    class Quantise(nn.Module):
        def forward(self, x):
            return RoundSTE.apply(x, 4.0)


    class PerImage(nn.Module):
        """Root forward loops over the batch (untraceable): pruned part by part."""

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(16, 8, 3, padding=1), Quantise(), nn.Conv2d(8, 8, 1))

        def forward(self, x):
            y = self.backbone(x)
            return torch.stack([y[i].sum() for i in range(y.shape[0])])


    def build_model():
        torch.manual_seed(0)
        return Net().eval()


    def example_inputs():
        torch.manual_seed(1)
        return torch.randn(2, 3, 8, 8)
''')

# fxprune hidden: `import fxprune` (and any pickle reference to it) raises ImportError
WITHOUT_FXPRUNE = "import sys; sys.modules['fxprune'] = None\n"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "ste_user_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("ste_user_model")
    yield module
    sys.modules.pop("ste_user_model", None)


def run_without_fxprune(code: str, cwd) -> list[str]:
    """Run ``code`` in a new interpreter: only the user's folder on the path, fxprune hidden."""
    environment = {**os.environ, "PYTHONPATH": str(cwd)}
    done = subprocess.run([sys.executable, "-c", WITHOUT_FXPRUNE + code], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


LOAD_AND_BACKWARD = textwrap.dedent("""
    import torch
    model = torch.load({slim!r}, weights_only=False)
    x = torch.load({x!r}).requires_grad_()
    y = model(x)
    y.square().sum().backward()
    print(repr(float(y.detach().double().sum())), repr(float(x.grad.double().abs().sum())),
          type(model.autograd_RoundSTE_0).__module__)
""")


def gradient_sum(model, x) -> tuple[float, float]:
    x = x.clone().requires_grad_()
    y = model(x)
    y.square().sum().backward()
    return float(y.detach().double().sum()), float(x.grad.double().abs().sum())


def test_api_slim_with_autograd_call_loads_without_fxprune(user_module, tmp_path):
    model, x = user_module.build_model(), user_module.example_inputs()
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert result.params_after < result.params_before
    call = result.model.get_submodule("autograd_RoundSTE_0")
    assert isinstance(call, AutogradFunctionCall)
    assert isinstance(copy.deepcopy(result.model).autograd_RoundSTE_0, AutogradFunctionCall)
    out, grad = gradient_sum(result.model, x)
    assert grad > 0.1  # the straight-through backward, not the zero gradient of round()
    fxprune.save_slim(result.model, tmp_path / "slim", x)
    torch.save(x, tmp_path / "x.pt")
    code = LOAD_AND_BACKWARD.format(slim=str(tmp_path / "slim" / "slim.pt"), x=str(tmp_path / "x.pt"))
    loaded_out, loaded_grad, where = run_without_fxprune(code, tmp_path)
    assert float(loaded_out) == pytest.approx(out, rel=1e-6, abs=1e-6)
    assert float(loaded_grad) == pytest.approx(grad, rel=1e-6)
    assert where == "torch.nn.modules.module"  # a torch module calling RoundSTE.apply
    # with fxprune present, load_slim gives the same model
    again, _ = fxprune.load_slim(tmp_path / "slim")
    assert gradient_sum(again, x) == pytest.approx((out, grad), rel=1e-6)


def test_cli_slim_with_autograd_call_loads_without_fxprune(user_module, tmp_path):
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "fxprune.cli", "prune", str(tmp_path / "ste_user_model.py"),
           "--ratio", "0.5", "--scorer", "l1", "--out", str(out)]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    x = user_module.example_inputs()
    torch.save(x, tmp_path / "x.pt")
    code = LOAD_AND_BACKWARD.format(slim=str(out / "slim.pt"), x=str(tmp_path / "x.pt"))
    loaded_out, loaded_grad, _ = run_without_fxprune(code, tmp_path)
    # the same numbers as the slim model loaded with fxprune in this process
    slim, _ = fxprune.load_slim(out)
    expected_out, expected_grad = gradient_sum(slim, x)
    assert float(loaded_grad) > 0.1
    assert (float(loaded_out), float(loaded_grad)) == pytest.approx((expected_out, expected_grad), rel=1e-6)


def test_partly_traced_model_with_autograd_call_loads_without_fxprune(user_module, tmp_path):
    torch.manual_seed(0)
    model, x = user_module.PerImage().eval(), user_module.example_inputs()
    result = fxprune.prune(model, x, 0.5, 0.15, "l1")
    assert [p.qualname for p in result.parts] == ["backbone"]
    assert isinstance(result.model, user_module.PerImage)
    out, grad = gradient_sum(result.model, x)
    assert grad > 0.1
    torch.save(result.model, tmp_path / "slim.pt")
    torch.save(x, tmp_path / "x.pt")
    code = LOAD_AND_BACKWARD.replace("model.autograd_RoundSTE_0", "model.backbone.autograd_RoundSTE_0")
    code = code.format(slim=str(tmp_path / "slim.pt"), x=str(tmp_path / "x.pt"))
    loaded_out, loaded_grad, where = run_without_fxprune(code, tmp_path)
    assert (float(loaded_out), float(loaded_grad)) == pytest.approx((out, grad), rel=1e-6)
    assert where == "torch.nn.modules.module"
