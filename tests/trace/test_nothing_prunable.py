"""Nothing prunable is an answer, not a success: the CLI names what blocks pruning,
writes nothing and exits 3."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

QUANTISED = textwrap.dedent('''
    import torch
    from torch import nn


    class RoundSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x * 4) / 4

        @staticmethod
        def backward(ctx, grad):
            return grad


    class Quantised(nn.Module):
        """Every channel meets the model input, the quantiser (a leaf) or the output."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.conv2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv2(RoundSTE.apply(self.conv1(x)))


    def build_model():
        return Quantised()


    def example_inputs():
        return torch.randn(1, 3, 16, 16)
''')


def test_cli_prune_with_nothing_prunable_exits_3_and_names_the_blockers(tmp_path):
    (tmp_path / "quantised_model.py").write_text(QUANTISED)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "fxprune.cli", "prune", str(tmp_path / "quantised_model.py"),
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"},
        check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "nothing to prune" in done.stderr
    assert "autograd_RoundSTE_0 (RoundSTE): custom torch.autograd.Function" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
